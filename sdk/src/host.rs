//! Functions the gateway offers plugins: logging, the clock, random bytes, and shared state
//! (windowed counters and a key-value store) that outlives a request.
//!
//! On `wasm32` these call the gateway. On every other target (plain `cargo test`) they call the
//! in-memory fake host of [`testing`](crate::testing), one per thread, so a plugin's unit tests
//! run without a gateway.
//!
//! None of them fail or panic: bad input is clamped or ignored as each function documents.
//!
//! Shared state is namespaced by the `[[plugin]]` name: every instance of that plugin, on every
//! worker, sees the same counters and keys, and a config reload keeps them (a reload must not
//! reset rate limits). Per-request data belongs in the request context instead
//! ([`Request::set_context`](crate::Request::set_context)).

/// Log levels, from the most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the plugin coped with.
    Warn,
    /// Something failed.
    Error,
}

/// Writes `message` to the gateway's log at `level`, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    sys::log(level, message);
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Milliseconds since the Unix epoch, from the gateway's clock.
///
/// In tests: the fake clock, which starts at [`testing::START_MS`](crate::testing::START_MS) and
/// moves only with [`testing::set_now_ms`](crate::testing::set_now_ms) and
/// [`testing::advance_ms`](crate::testing::advance_ms).
pub fn now_ms() -> u64 {
    sys::now_ms()
}

/// The most bytes one host call of [`random_bytes`] fetches.
pub const RANDOM_BYTES_PER_CALL: usize = 4096;

/// `len` bytes from the gateway's cryptographically secure generator.
///
/// The contract gives at most [`RANDOM_BYTES_PER_CALL`] bytes per host call; larger requests are
/// served by several calls, so you always get `len` bytes. In tests the bytes come from a
/// deterministic, not secure, generator.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want = (len - out.len()).min(RANDOM_BYTES_PER_CALL);
        // `want` is at most 4096, so it fits a u32.
        let chunk = sys::random_bytes(want as u32);
        if chunk.is_empty() {
            break; // a host that gives nothing would otherwise loop forever
        }
        out.extend_from_slice(&chunk[..chunk.len().min(want)]);
    }
    out
}

/// The counts [`counter_incr`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCount {
    /// The count in the current window, after this increment.
    pub current: i64,
    /// The final count of the previous window (for sliding-window estimates).
    pub previous: i64,
    /// Milliseconds until the current window ends.
    pub remaining_ms: u64,
}

impl WindowCount {
    /// A sliding-window estimate of the count over the last `window_ms`: the current count plus
    /// the share of the previous window that still overlaps it. This is what a rate limiter
    /// compares with its limit; it smooths the burst a fixed window allows at its edges.
    ///
    /// ```
    /// use sluice_sdk::host::WindowCount;
    ///
    /// // 3/4 of the window left: 3/4 of the previous window's 40 still counts.
    /// let c = WindowCount { current: 5, previous: 40, remaining_ms: 45_000 };
    /// assert_eq!(c.sliding(60_000), 35);
    /// ```
    pub fn sliding(&self, window_ms: u64) -> i64 {
        if window_ms == 0 {
            return self.current;
        }
        let remaining = i128::from(self.remaining_ms.min(window_ms));
        let carried = i128::from(self.previous) * remaining / i128::from(window_ms);
        // The result lies between current and current + previous, so it fits unless those
        // already overflow; saturate rather than wrap.
        let total = i128::from(self.current) + carried;
        i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
    }
}

/// Adds `delta` (may be negative or 0, to read) to the counter `key` in the current window of
/// `window_ms` milliseconds, and returns the counts.
///
/// Windows are aligned to the epoch: with `window_ms = 60_000` a window is one calendar minute.
/// The counter is shared by every instance of the plugin and survives reloads. Use one
/// `window_ms` per key. `window_ms` should be at least 1.
///
/// A new counter, like a stored value, is charged to the plugin's `state_mb` in the gateway; one
/// that would go past it traps (the hook call fails). A counter is freed once both its windows
/// have ended, a value when it expires or is deleted.
pub fn counter_incr(key: &str, delta: i64, window_ms: u64) -> WindowCount {
    sys::counter_incr(key, delta, window_ms)
}

/// The value stored under `key`, unless it is absent or expired.
pub fn kv_get(key: &str) -> Option<String> {
    sys::kv_get(key)
}

/// Stores `value` under `key`; `ttl_ms` 0 means no expiry. Traps if that would take the
/// plugin's state past its `state_mb` (see [`counter_incr`]).
pub fn kv_set(key: &str, value: &str, ttl_ms: u64) {
    sys::kv_set(key, value, ttl_ms);
}

/// Atomically replaces the value of `key` with `new` (`None` deletes it) if the current value
/// equals `expected` (`None`: the key is absent or expired), with a TTL of `ttl_ms` (0: none).
/// Returns whether it did.
///
/// ```
/// use sluice_sdk::host;
///
/// // Take a lock only if nobody holds it.
/// assert!(host::kv_compare_and_swap("lock", None, Some("me"), 5_000));
/// assert!(!host::kv_compare_and_swap("lock", None, Some("you"), 5_000));
/// assert_eq!(host::kv_get("lock").as_deref(), Some("me"));
/// ```
pub fn kv_compare_and_swap(key: &str, expected: Option<&str>, new: Option<&str>, ttl_ms: u64) -> bool {
    sys::kv_compare_and_swap(key, expected, new, ttl_ms)
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake as sys;

/// The real host: the imports generated from the WIT file.
#[cfg(target_arch = "wasm32")]
mod sys {
    use super::{Level, WindowCount};
    use crate::__bindings::sluice::plugin::host as wit;

    pub(super) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub(super) fn now_ms() -> u64 {
        wit::now_ms()
    }

    pub(super) fn random_bytes(len: u32) -> Vec<u8> {
        wit::random_bytes(len)
    }

    pub(super) fn counter_incr(key: &str, delta: i64, window_ms: u64) -> WindowCount {
        let c = wit::counter_incr(key, delta, window_ms);
        WindowCount { current: c.current, previous: c.previous, remaining_ms: c.remaining_ms }
    }

    pub(super) fn kv_get(key: &str) -> Option<String> {
        wit::kv_get(key)
    }

    pub(super) fn kv_set(key: &str, value: &str, ttl_ms: u64) {
        wit::kv_set(key, value, ttl_ms);
    }

    pub(super) fn kv_compare_and_swap(key: &str, expected: Option<&str>, new: Option<&str>, ttl_ms: u64) -> bool {
        wit::kv_compare_and_swap(key, expected, new, ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn random_bytes_returns_exactly_len_bytes_across_calls() {
        for len in [0, 1, 16, 4096, 4097, 10_000] {
            assert_eq!(random_bytes(len).len(), len);
        }
        assert_ne!(random_bytes(32), random_bytes(32), "the generator moves on");
    }

    #[test]
    fn log_helpers_reach_the_fake_host() {
        testing::reset();
        info("one");
        error("two");
        log(Level::Trace, "three");
        assert_eq!(
            testing::logs(),
            [(Level::Info, "one".to_string()), (Level::Error, "two".to_string()), (Level::Trace, "three".to_string())]
        );
    }

    #[test]
    fn sliding_handles_edges() {
        let c = WindowCount { current: 1, previous: i64::MAX, remaining_ms: 10 };
        assert_eq!(c.sliding(0), 1);
        assert_eq!(c.sliding(10), i64::MAX);
        assert_eq!(WindowCount { remaining_ms: 99, ..c }.sliding(10), i64::MAX, "remaining is capped at the window");
    }
}
