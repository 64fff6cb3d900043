//! State that outlives a request: windowed counters and a key-value store, shared by every instance
//! of a plugin in the process and kept across reloads (a reload must not reset a rate limit).
//!
//! Plugins reach it through one trait, [`SharedState`], namespaced by plugin name. The in-memory
//! backend here is the default; a remote backend (Redis, so several gateways share limits) can
//! implement the same trait. Hook calls are synchronous, so such a backend answers from local
//! state and synchronises in the background, and a failure to reach it shows the plugin an absent
//! value or a failed swap rather than stalling the request.
//!
//! The state lives in the gateway, outside the plugin's `memory_mb`, so each plugin's share is
//! bounded by its own quota (`state_mb`): an entry that would take a plugin over it is refused with
//! [`StateFull`], which traps the hook call (the plugin asked for what it may not have, as when its
//! memory is exhausted). Without it, a plugin storing under a new key on every request would grow
//! the gateway until the kernel killed it, taking every other route with it.
//!
//! The in-memory backend forgets, once a second on a thread of its own, the counters whose windows
//! have both ended and the values past their expiry ([`InMemoryState::sweep`]): a limit keyed by
//! client address would otherwise keep a counter for every address it ever saw (and fill its
//! quota), and a big sweep on a worker would hold up its requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use dashmap::mapref::one::Ref;

use crate::metrics::METRICS;

/// How often the in-memory state is swept (see [`InMemoryState::sweep`]).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What an entry is charged beyond its key and value bytes: about what the maps spend on one (the
/// `String`s, the counter or the expiry, the table's slot, its growth, the allocator's rounding).
/// Measured with 16-byte keys and values: a million counters took 168 MB, a million values 208 MB
/// (charged 192 and 208).
const ENTRY_OVERHEAD: usize = 176;

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

/// A plugin's state would exceed its quota: the entry was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "its shared state is full: storing {wanted} more bytes would exceed its {quota} bytes (state_mb) \
     with {used} in use; entries are freed as their windows end and values expire, so store fewer \
     keys, give values a TTL, or raise state_mb"
)]
pub struct StateFull {
    /// The bytes the refused entry would have added.
    pub wanted: usize,
    /// The bytes in use.
    pub used: usize,
    /// The plugin's quota in bytes.
    pub quota: usize,
}

/// Shared plugin state. `namespace` is the plugin's name, so plugins never see each other's keys;
/// `quota` is its share in bytes, and a change that would add an entry or grow one past it fails
/// with [`StateFull`] and changes nothing.
pub trait SharedState: Send + Sync {
    /// Adds `delta` to `key` in the current window of length `window` (aligned to the epoch).
    fn counter_incr(
        &self,
        namespace: &str,
        quota: usize,
        key: &str,
        delta: i64,
        window: Duration,
    ) -> Result<WindowCount, StateFull>;
    /// The live value of `key`.
    fn kv_get(&self, namespace: &str, key: &str) -> Option<String>;
    /// Stores `value`; `ttl` of zero means no expiry.
    fn kv_set(&self, namespace: &str, quota: usize, key: &str, value: String, ttl: Duration) -> Result<(), StateFull>;
    /// Replaces the value if it equals `expected` (`None`: absent); `new = None` deletes.
    fn kv_compare_and_swap(
        &self,
        namespace: &str,
        quota: usize,
        key: &str,
        swap: Swap<'_>,
        ttl: Duration,
    ) -> Result<bool, StateFull>;
}

/// The two values of a compare-and-swap.
pub struct Swap<'a> {
    /// The value the key must hold (`None`: absent or expired).
    pub expected: Option<&'a str>,
    /// The value to store (`None`: delete the key).
    pub new: Option<String>,
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

/// One plugin's counters and values, and the bytes they are charged.
#[derive(Default)]
struct Space {
    counters: DashMap<String, Mutex<Counter>>,
    values: DashMap<String, Entry>,
    /// The sum of [`counter_cost`] and [`value_cost`] over the entries above.
    used: AtomicUsize,
}

impl Space {
    /// Charges `bytes` to the space unless that takes it over `quota`.
    fn reserve(&self, bytes: usize, quota: usize) -> Result<(), StateFull> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed);
        if used.saturating_add(bytes) > quota {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(StateFull { wanted: bytes, used, quota });
        }
        Ok(())
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Charges a value's change from `old` bytes to `new`.
    fn resize(&self, old: usize, new: usize, quota: usize) -> Result<(), StateFull> {
        if new > old {
            return self.reserve(new - old, quota);
        }
        self.release(old - new);
        Ok(())
    }
}

fn counter_cost(key: &str) -> usize {
    key.len() + ENTRY_OVERHEAD
}

fn value_cost(key: &str, value: &str) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// The default backend: in this process's memory, sharded so instances on different workers
/// rarely contend.
#[derive(Default)]
pub struct InMemoryState {
    /// By plugin: a space that exists is found without building an owned name.
    spaces: DashMap<String, Space>,
    clock: Option<fn() -> u64>,
}

impl InMemoryState {
    fn now_ms(&self) -> u64 {
        self.clock.map_or_else(now_ms, |clock| clock())
    }

    /// The space of `namespace`, created empty if new.
    fn space(&self, namespace: &str) -> Ref<'_, String, Space> {
        match self.spaces.get(namespace) {
            Some(space) => space,
            None => self.spaces.entry(namespace.to_string()).or_default().downgrade(),
        }
    }

    /// Runs `f` on the counter `key` of `namespace`, created at zero if new and within `quota`.
    /// Only a new namespace or key costs an allocation.
    fn with_counter<R>(
        &self,
        namespace: &str,
        quota: usize,
        key: &str,
        f: impl FnOnce(&Mutex<Counter>) -> R,
    ) -> Result<R, StateFull> {
        let space = self.space(namespace);
        if let Some(slot) = space.counters.get(key) {
            return Ok(f(&slot));
        }
        let cost = counter_cost(key);
        space.reserve(cost, quota)?;
        let slot = match space.counters.entry(key.to_string()) {
            dashmap::Entry::Occupied(slot) => {
                space.release(cost);
                slot.into_ref()
            }
            dashmap::Entry::Vacant(slot) => slot.insert(Mutex::default()),
        };
        Ok(f(&slot))
    }

    /// Forgets the counters whose current and previous windows have both ended (an increment would
    /// start them from zero anyway) and the values past their expiry, releasing their bytes;
    /// returns what is left.
    pub fn sweep(&self) -> Entries {
        let now = self.now_ms();
        let mut left = Entries { counters: 0, values: 0 };
        for space in self.spaces.iter() {
            let mut freed = 0;
            space.counters.retain(|key, counter| {
                let spent = counter.get_mut().unwrap_or_else(|e| e.into_inner()).spent(now);
                freed += if spent { counter_cost(key) } else { 0 };
                !spent
            });
            space.values.retain(|key, entry| {
                let live = live(entry, now);
                freed += if live { 0 } else { value_cost(key, &entry.value) };
                live
            });
            space.release(freed);
            left.counters += space.counters.len();
            left.values += space.values.len();
        }
        left
    }

    /// The bytes charged to each plugin's state, by plugin name.
    pub fn usage(&self) -> Vec<(String, usize)> {
        self.spaces.iter().map(|space| (space.key().clone(), space.used.load(Ordering::Relaxed))).collect()
    }
}

/// Sweeps `state` every [`SWEEP_INTERVAL`] on a thread of its own, publishing what is left in the
/// metrics, until the state is dropped.
pub fn sweep_every_interval(state: Weak<InMemoryState>) -> std::io::Result<()> {
    std::thread::Builder::new().name("sluice-state".into()).spawn(move || {
        loop {
            std::thread::sleep(SWEEP_INTERVAL);
            let Some(state) = state.upgrade() else { return };
            METRICS.plugin_state(state.sweep(), state.usage());
        }
    })?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SharedState for InMemoryState {
    fn counter_incr(
        &self,
        namespace: &str,
        quota: usize,
        key: &str,
        delta: i64,
        window: Duration,
    ) -> Result<WindowCount, StateFull> {
        let window_ms = (window.as_millis() as u64).max(1);
        let now = self.now_ms();
        let start = now - now % window_ms;
        self.with_counter(namespace, quota, key, |slot| {
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
        let space = self.spaces.get(namespace)?;
        let entry = space.values.get(key)?;
        live(&entry, now).then(|| entry.value.clone())
    }

    fn kv_set(&self, namespace: &str, quota: usize, key: &str, value: String, ttl: Duration) -> Result<(), StateFull> {
        let expires_ms = expiry(self.now_ms(), ttl);
        let space = self.space(namespace);
        match space.values.entry(key.to_string()) {
            dashmap::Entry::Occupied(mut slot) => {
                space.resize(value_cost(key, &slot.get().value), value_cost(key, &value), quota)?;
                *slot.get_mut() = Entry { value, expires_ms };
            }
            dashmap::Entry::Vacant(slot) => {
                space.reserve(value_cost(key, &value), quota)?;
                slot.insert(Entry { value, expires_ms });
            }
        }
        Ok(())
    }

    fn kv_compare_and_swap(
        &self,
        namespace: &str,
        quota: usize,
        key: &str,
        swap: Swap<'_>,
        ttl: Duration,
    ) -> Result<bool, StateFull> {
        let now = self.now_ms();
        let space = self.space(namespace);
        match space.values.entry(key.to_string()) {
            dashmap::Entry::Occupied(mut slot) => {
                let current = live(slot.get(), now).then_some(slot.get().value.as_str());
                if current != swap.expected {
                    return Ok(false);
                }
                let old = value_cost(key, &slot.get().value);
                match swap.new {
                    Some(value) => {
                        space.resize(old, value_cost(key, &value), quota)?;
                        *slot.get_mut() = Entry { value, expires_ms: expiry(now, ttl) };
                    }
                    None => {
                        slot.remove();
                        space.release(old);
                    }
                }
                Ok(true)
            }
            dashmap::Entry::Vacant(slot) => {
                if swap.expected.is_some() {
                    return Ok(false);
                }
                if let Some(value) = swap.new {
                    space.reserve(value_cost(key, &value), quota)?;
                    slot.insert(Entry { value, expires_ms: expiry(now, ttl) });
                }
                Ok(true)
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

    /// A quota no test reaches unless it means to.
    const Q: usize = usize::MAX;

    fn swap<'a>(expected: Option<&'a str>, new: Option<String>) -> Swap<'a> {
        Swap { expected, new }
    }

    fn used(state: &InMemoryState, plugin: &str) -> usize {
        state.usage().into_iter().find(|(name, _)| name == plugin).map_or(0, |(_, bytes)| bytes)
    }

    fn state_at(ms: u64) -> InMemoryState {
        NOW.set(ms);
        InMemoryState { clock: Some(|| NOW.get()), ..InMemoryState::default() }
    }

    #[test]
    fn counters_count_per_window_and_remember_the_previous_one() {
        let state = state_at(10_000);
        let second = Duration::from_secs(1);
        assert_eq!(state.counter_incr("p", Q, "k", 1, second).unwrap().current, 1);
        let count = state.counter_incr("p", Q, "k", 2, second).unwrap();
        assert_eq!((count.current, count.previous, count.remaining), (3, 0, second));
        assert_eq!(state.counter_incr("other", Q, "k", 1, second).unwrap().current, 1, "namespaces are apart");
        NOW.set(11_250);
        let count = state.counter_incr("p", Q, "k", 1, second).unwrap();
        assert_eq!((count.current, count.previous), (1, 3));
        assert_eq!(count.remaining, Duration::from_millis(750));
        NOW.set(15_000);
        assert_eq!(state.counter_incr("p", Q, "k", 1, second).unwrap().previous, 0, "a gap forgets the old window");
    }

    #[test]
    fn a_sweep_forgets_counters_whose_windows_ended_and_expired_values() {
        let state = state_at(10_000);
        let second = Duration::from_secs(1);
        for key in ["a", "b", "c"] {
            state.counter_incr("p", Q, key, 1, second).unwrap();
        }
        state.counter_incr("q", Q, "long", 1, Duration::from_secs(60)).unwrap();
        state.kv_set("p", Q, "short", "1".into(), Duration::from_millis(500)).unwrap();
        state.kv_set("p", Q, "forever", "1".into(), Duration::ZERO).unwrap();
        assert_eq!(state.sweep(), Entries { counters: 4, values: 2 });
        NOW.set(11_999);
        state.counter_incr("p", Q, "b", 1, second).unwrap();
        assert_eq!(state.sweep(), Entries { counters: 4, values: 1 }, "a and c still hold the previous window");
        NOW.set(12_000);
        assert_eq!(state.sweep(), Entries { counters: 2, values: 1 }, "b counted in the window before 12 s");
        let count = state.counter_incr("p", Q, "a", 1, second).unwrap();
        assert_eq!((count.current, count.previous), (1, 0), "a forgotten counter starts again from zero");
    }

    #[test]
    fn values_expire_and_swap_atomically() {
        let state = state_at(1_000);
        state.kv_set("p", Q, "a", "1".into(), Duration::from_millis(500)).unwrap();
        assert_eq!(state.kv_get("p", "a").as_deref(), Some("1"));
        assert!(state.kv_get("q", "a").is_none());
        assert!(!state.kv_compare_and_swap("p", Q, "a", swap(Some("2"), Some("3".into())), Duration::ZERO).unwrap());
        assert!(state.kv_compare_and_swap("p", Q, "a", swap(Some("1"), Some("2".into())), Duration::ZERO).unwrap());
        assert!(
            state.kv_compare_and_swap("p", Q, "b", swap(None, Some("x".into())), Duration::from_millis(10)).unwrap()
        );
        assert!(!state.kv_compare_and_swap("p", Q, "b", swap(None, Some("y".into())), Duration::ZERO).unwrap());
        NOW.set(1_600);
        assert_eq!(state.kv_get("p", "a").as_deref(), Some("2"), "no ttl: still there");
        assert!(state.kv_get("p", "b").is_none(), "expired");
        assert!(
            state.kv_compare_and_swap("p", Q, "b", swap(None, None), Duration::ZERO).unwrap(),
            "an expired key counts as absent"
        );
        assert!(state.kv_compare_and_swap("p", Q, "a", swap(Some("2"), None), Duration::ZERO).unwrap());
        assert!(state.kv_get("p", "a").is_none());
    }

    #[test]
    fn a_plugin_cannot_store_past_its_quota_and_gets_back_what_it_frees() {
        let state = state_at(10_000);
        let second = Duration::from_secs(1);
        let quota = 3 * counter_cost("k0");
        for key in ["k0", "k1", "k2"] {
            state.counter_incr("p", quota, key, 1, second).unwrap();
        }
        let full = state.counter_incr("p", quota, "k3", 1, second).unwrap_err();
        assert_eq!(full, StateFull { wanted: counter_cost("k3"), used: quota, quota });
        assert_eq!(state.counter_incr("p", quota, "k0", 1, second).unwrap().current, 2, "known keys still count");
        assert_eq!(state.counter_incr("q", quota, "k3", 1, second).unwrap().current, 1, "each plugin has its own");
        assert!(state.kv_set("p", quota, "v", String::new(), Duration::ZERO).is_err(), "values share the quota");
        NOW.set(12_000);
        state.sweep();
        assert_eq!(used(&state, "p"), 0, "swept counters give their bytes back");

        let quota = value_cost("v", "1234");
        state.kv_set("p", quota, "v", "12".into(), Duration::ZERO).unwrap();
        let grown = state.kv_set("p", quota, "v", "12345".into(), Duration::ZERO);
        assert_eq!(grown.unwrap_err().wanted, 3);
        assert_eq!(state.kv_get("p", "v").as_deref(), Some("12"), "a refused change changes nothing");
        let swapped =
            state.kv_compare_and_swap("p", quota, "v", swap(Some("12"), Some("12345".into())), Duration::ZERO);
        assert!(swapped.is_err());
        assert!(
            state.kv_compare_and_swap("p", quota, "v", swap(Some("12"), Some("1234".into())), Duration::ZERO).unwrap()
        );
        assert_eq!(used(&state, "p"), quota);
        state.kv_set("p", quota, "v", "1".into(), Duration::ZERO).unwrap();
        assert_eq!(used(&state, "p"), value_cost("v", "1"), "a smaller value gives bytes back");
        assert!(state.kv_compare_and_swap("p", quota, "v", swap(Some("1"), None), Duration::ZERO).unwrap());
        state.kv_set("p", quota, "w", "1".into(), Duration::from_millis(10)).unwrap();
        NOW.set(12_010);
        state.sweep();
        assert_eq!(used(&state, "p"), 0, "deleted and expired values give their bytes back");
    }
}
