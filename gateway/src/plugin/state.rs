//! State that outlives a request: windowed counters and a key-value store, shared by every instance
//! of a plugin in the process and kept across reloads (a reload must not reset a rate limit).
//!
//! Plugins reach it through one trait, [`SharedState`], namespaced by plugin name. The in-memory
//! backend here is the default; a remote backend (Redis, so several gateways share limits) can
//! implement the same trait. Hook calls are synchronous, so such a backend answers from local
//! state and synchronises in the background, and every method may fail: a failure reaches the
//! plugin as an absent value or a failed swap rather than stalling the request.
//!
//! The in-memory backend forgets, once a second on a thread of its own, the counters whose windows
//! have both ended and the values past their expiry ([`InMemoryState::sweep`]): a limit keyed by
//! client address would otherwise keep a counter for every address it ever saw, and a big sweep
//! on a worker would hold up its requests.

use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::metrics::METRICS;

/// How often the in-memory state is swept (see [`InMemoryState::sweep`]).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The counts of a windowed counter after an increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// The count in the current window.
    pub current: i64,
    /// The final count of the previous window.
    pub previous: i64,
    /// Time left in the current window.
    pub remaining: Duration,
}

/// Shared plugin state. `namespace` is the plugin's name, so plugins never see each other's keys.
pub trait SharedState: Send + Sync {
    /// Adds `delta` to `key` in the current window of length `window` (aligned to the epoch).
    fn counter_incr(&self, namespace: &str, key: &str, delta: i64, window: Duration) -> WindowCount;
    /// The live value of `key`.
    fn kv_get(&self, namespace: &str, key: &str) -> Option<String>;
    /// Stores `value`; `ttl` of zero means no expiry.
    fn kv_set(&self, namespace: &str, key: &str, value: String, ttl: Duration);
    /// Replaces the value if it equals `expected` (`None`: absent); `new = None` deletes.
    fn kv_compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&str>,
        new: Option<String>,
        ttl: Duration,
    ) -> bool;
}

/// A counter's current and previous window.
#[derive(Default)]
struct Counter {
    window_ms: u64,
    window_start: u64,
    current: i64,
    previous: i64,
}

impl Counter {
    /// Whether both of the counter's windows have ended at `now`: it then reads as a new one.
    fn spent(&self, now: u64) -> bool {
        self.window_start.saturating_add(self.window_ms.saturating_mul(2)) <= now
    }
}

/// How many entries a state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries {
    /// Windowed counters.
    pub counters: usize,
    /// Stored values.
    pub values: usize,
}

/// A stored value and when it expires (ms since the epoch; 0 never).
struct Entry {
    value: String,
    expires_ms: u64,
}

/// The default backend: in this process's memory, sharded so instances on different workers
/// rarely contend.
#[derive(Default)]
pub struct InMemoryState {
    /// By namespace, then key: a counter that exists is found without building an owned key.
    counters: DashMap<String, DashMap<String, Mutex<Counter>>>,
    values: DashMap<(String, String), Entry>,
    clock: Option<fn() -> u64>,
}

impl InMemoryState {
    fn now_ms(&self) -> u64 {
        self.clock.map_or_else(now_ms, |clock| clock())
    }

    /// Runs `f` on the counter `key` of `namespace`, created at zero if new. Only a new namespace
    /// or key costs an allocation.
    fn with_counter<R>(&self, namespace: &str, key: &str, f: impl FnOnce(&Mutex<Counter>) -> R) -> R {
        if let Some(space) = self.counters.get(namespace) {
            if let Some(slot) = space.get(key) {
                return f(&slot);
            }
            return f(&space.entry(key.to_string()).or_default());
        }
        let space = self.counters.entry(namespace.to_string()).or_default();
        f(&space.entry(key.to_string()).or_default())
    }

    /// Forgets the counters whose current and previous windows have both ended (an increment would
    /// start them from zero anyway) and the values past their expiry; returns what is left.
    pub fn sweep(&self) -> Entries {
        let now = self.now_ms();
        let mut counters = 0;
        for space in self.counters.iter() {
            space.retain(|_, counter| !counter.get_mut().unwrap_or_else(|e| e.into_inner()).spent(now));
            counters += space.len();
        }
        self.values.retain(|_, entry| live(entry, now));
        Entries { counters, values: self.values.len() }
    }
}

/// Sweeps `state` every [`SWEEP_INTERVAL`] on a thread of its own, publishing what is left in the
/// metrics, until the state is dropped.
pub fn sweep_every_interval(state: Weak<InMemoryState>) -> std::io::Result<()> {
    std::thread::Builder::new().name("sluice-state".into()).spawn(move || {
        loop {
            std::thread::sleep(SWEEP_INTERVAL);
            let Some(state) = state.upgrade() else { return };
            METRICS.plugin_state(state.sweep());
        }
    })?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SharedState for InMemoryState {
    fn counter_incr(&self, namespace: &str, key: &str, delta: i64, window: Duration) -> WindowCount {
        let window_ms = (window.as_millis() as u64).max(1);
        let now = self.now_ms();
        let start = now - now % window_ms;
        self.with_counter(namespace, key, |slot| {
            let mut counter = slot.lock().unwrap_or_else(|e| e.into_inner());
            if counter.window_ms != window_ms {
                *counter = Counter { window_ms, window_start: start, ..Counter::default() };
            } else if counter.window_start != start {
                let consecutive = counter.window_start + window_ms == start;
                counter.previous = if consecutive { counter.current } else { 0 };
                counter.current = 0;
                counter.window_start = start;
            }
            counter.current = counter.current.saturating_add(delta);
            WindowCount {
                current: counter.current,
                previous: counter.previous,
                remaining: Duration::from_millis(start + window_ms - now),
            }
        })
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Option<String> {
        let now = self.now_ms();
        let entry = self.values.get(&(namespace.to_string(), key.to_string()))?;
        live(&entry, now).then(|| entry.value.clone())
    }

    fn kv_set(&self, namespace: &str, key: &str, value: String, ttl: Duration) {
        let expires_ms = expiry(self.now_ms(), ttl);
        self.values.insert((namespace.to_string(), key.to_string()), Entry { value, expires_ms });
    }

    fn kv_compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&str>,
        new: Option<String>,
        ttl: Duration,
    ) -> bool {
        let now = self.now_ms();
        let key = (namespace.to_string(), key.to_string());
        match self.values.entry(key) {
            dashmap::Entry::Occupied(mut slot) => {
                let current = live(slot.get(), now).then_some(slot.get().value.as_str());
                if current != expected {
                    return false;
                }
                match new {
                    Some(value) => *slot.get_mut() = Entry { value, expires_ms: expiry(now, ttl) },
                    None => {
                        slot.remove();
                    }
                }
                true
            }
            dashmap::Entry::Vacant(slot) => {
                if expected.is_some() {
                    return false;
                }
                if let Some(value) = new {
                    slot.insert(Entry { value, expires_ms: expiry(now, ttl) });
                }
                true
            }
        }
    }
}

fn live(entry: &Entry, now: u64) -> bool {
    entry.expires_ms == 0 || entry.expires_ms > now
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    if ttl.is_zero() { 0 } else { now + ttl.as_millis() as u64 }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// The fake clock, one per test thread (tests run in parallel).
        static NOW: Cell<u64> = const { Cell::new(0) };
    }

    fn state_at(ms: u64) -> InMemoryState {
        NOW.set(ms);
        InMemoryState { clock: Some(|| NOW.get()), ..InMemoryState::default() }
    }

    #[test]
    fn counters_count_per_window_and_remember_the_previous_one() {
        let state = state_at(10_000);
        let second = Duration::from_secs(1);
        assert_eq!(state.counter_incr("p", "k", 1, second).current, 1);
        let count = state.counter_incr("p", "k", 2, second);
        assert_eq!((count.current, count.previous, count.remaining), (3, 0, second));
        assert_eq!(state.counter_incr("other", "k", 1, second).current, 1, "namespaces are apart");
        NOW.set(11_250);
        let count = state.counter_incr("p", "k", 1, second);
        assert_eq!((count.current, count.previous), (1, 3));
        assert_eq!(count.remaining, Duration::from_millis(750));
        NOW.set(15_000);
        assert_eq!(state.counter_incr("p", "k", 1, second).previous, 0, "a gap forgets the old window");
    }

    #[test]
    fn a_sweep_forgets_counters_whose_windows_ended_and_expired_values() {
        let state = state_at(10_000);
        let second = Duration::from_secs(1);
        for key in ["a", "b", "c"] {
            state.counter_incr("p", key, 1, second);
        }
        state.counter_incr("q", "long", 1, Duration::from_secs(60));
        state.kv_set("p", "short", "1".into(), Duration::from_millis(500));
        state.kv_set("p", "forever", "1".into(), Duration::ZERO);
        assert_eq!(state.sweep(), Entries { counters: 4, values: 2 });
        NOW.set(11_999);
        state.counter_incr("p", "b", 1, second);
        assert_eq!(state.sweep(), Entries { counters: 4, values: 1 }, "a and c still hold the previous window");
        NOW.set(12_000);
        assert_eq!(state.sweep(), Entries { counters: 2, values: 1 }, "b counted in the window before 12 s");
        let count = state.counter_incr("p", "a", 1, second);
        assert_eq!((count.current, count.previous), (1, 0), "a forgotten counter starts again from zero");
    }

    #[test]
    fn values_expire_and_swap_atomically() {
        let state = state_at(1_000);
        state.kv_set("p", "a", "1".into(), Duration::from_millis(500));
        assert_eq!(state.kv_get("p", "a").as_deref(), Some("1"));
        assert!(state.kv_get("q", "a").is_none());
        assert!(!state.kv_compare_and_swap("p", "a", Some("2"), Some("3".into()), Duration::ZERO));
        assert!(state.kv_compare_and_swap("p", "a", Some("1"), Some("2".into()), Duration::ZERO));
        assert!(state.kv_compare_and_swap("p", "b", None, Some("x".into()), Duration::from_millis(10)));
        assert!(!state.kv_compare_and_swap("p", "b", None, Some("y".into()), Duration::ZERO));
        NOW.set(1_600);
        assert_eq!(state.kv_get("p", "a").as_deref(), Some("2"), "no ttl: still there");
        assert!(state.kv_get("p", "b").is_none(), "expired");
        assert!(state.kv_compare_and_swap("p", "b", None, None, Duration::ZERO), "an expired key counts as absent");
        assert!(state.kv_compare_and_swap("p", "a", Some("2"), None, Duration::ZERO));
        assert!(state.kv_get("p", "a").is_none());
    }
}
