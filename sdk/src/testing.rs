//! Unit-test plugins with plain `cargo test`: builders for the values hooks receive, and a fake
//! host behind [`host`](crate::host).
//!
//! On every target but `wasm32`, the [`host`](crate::host) functions go to an in-memory fake
//! kept per thread. `cargo test` runs each test on its own thread, so tests do not see each
//! other's counters, keys, clock or logs; [`reset`] clears them within a test. The fake keeps
//! the gateway's semantics: counters in epoch-aligned windows, keys with TTL and
//! compare-and-swap, and a clock that moves only when you move it.
//!
//! ```
//! use sluice_sdk::prelude::*;
//! use sluice_sdk::testing;
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Greeter)
//!     }
//!
//!     fn on_request(&mut self, req: &mut Request) -> Action {
//!         let hits = host::counter_incr("hits", 1, 60_000).current;
//!         req.set_header("x-hello", req.client_ip().to_string());
//!         req.set_context("hits", hits.to_string());
//!         if req.header_str("x-admin").is_some() {
//!             return Action::respond(403).body("no");
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! let mut plugin: Greeter = testing::init("{}").unwrap();
//!
//! let mut req = testing::request("GET", "/").client_ip("10.0.0.1").build();
//! assert!(plugin.on_request(&mut req).is_continue());
//! assert_eq!(req.header_str("x-hello"), Some("10.0.0.1"));
//! assert_eq!(req.context_as::<i64>("hits"), Some(1));
//!
//! let mut req = testing::request("GET", "/").header("x-admin", "1").build();
//! let action = plugin.on_request(&mut req);
//! assert_eq!(action.reply().unwrap().status, 403);
//! assert_eq!(req.context("hits"), Some("2"));
//! ```

use crate::fields::{self, Kind};
use crate::host::Level;
use crate::{Config, Plugin, Request, Response, TlsInfo};

/// Runs `P::init` with this config JSON, as the gateway would.
pub fn init<P: Plugin>(config_json: &str) -> Result<P, String> {
    P::init(Config::new(config_json))
}

/// Starts building a request with this method and path. Defaults: no query, no headers, client
/// IP `127.0.0.1`, route `test`, no TLS, empty context.
pub fn request(method: &str, path: &str) -> RequestBuilder {
    let mut req = Request::blank();
    req.method = method.into();
    req.path = path.into();
    RequestBuilder { req, headers: Vec::new(), context: Vec::new() }
}

/// Builds a [`Request`]; start with [`request`].
#[derive(Debug)]
#[must_use = "call .build() to get the request"]
pub struct RequestBuilder {
    req: Request,
    headers: Vec<(String, String)>,
    context: Vec<(String, String)>,
}

impl RequestBuilder {
    /// Sets the query (without `?`).
    pub fn query(mut self, query: &str) -> Self {
        self.req.query = query.into();
        self
    }

    /// Adds a header; the name is lower-cased, as the gateway sends it. Repeat for more values.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the client address.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.req.client_ip = ip.into();
        self
    }

    /// Sets the route name.
    pub fn route(mut self, route: &str) -> Self {
        self.req.route = route.into();
        self
    }

    /// Marks the request as having come over TLS.
    pub fn tls(mut self, tls: TlsInfo) -> Self {
        self.req.tls = Some(tls);
        self
    }

    /// Adds a request context entry, as an earlier hook would have set it.
    pub fn context(mut self, key: &str, value: &str) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }

    /// The request, with no changes recorded.
    pub fn build(self) -> Request {
        let mut req = self.req;
        req.headers = encode(&self.headers, Kind::Headers);
        req.context = encode(&self.context, Kind::Context);
        req
    }
}

/// Starts building a response with this status. Defaults: no headers, request `GET /` with no
/// headers, route `test`, empty context.
pub fn response(status: u16) -> ResponseBuilder {
    let mut resp = Response::blank();
    resp.status = status;
    ResponseBuilder { resp, headers: Vec::new(), request_headers: Vec::new(), context: Vec::new() }
}

/// Builds a [`Response`]; start with [`response`].
#[derive(Debug)]
#[must_use = "call .build() to get the response"]
pub struct ResponseBuilder {
    resp: Response,
    headers: Vec<(String, String)>,
    request_headers: Vec<(String, String)>,
    context: Vec<(String, String)>,
}

impl ResponseBuilder {
    /// Adds a response header (name lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the method and path of the request this response answers.
    pub fn request(mut self, method: &str, path: &str) -> Self {
        self.resp.request_method = method.into();
        self.resp.request_path = path.into();
        self
    }

    /// Adds a header of the request this response answers (name lower-cased).
    pub fn request_header(mut self, name: &str, value: &str) -> Self {
        self.request_headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the route name.
    pub fn route(mut self, route: &str) -> Self {
        self.resp.route = route.into();
        self
    }

    /// Adds a request context entry, as an earlier hook would have set it.
    pub fn context(mut self, key: &str, value: &str) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }

    /// The response, with no changes recorded.
    pub fn build(self) -> Response {
        let mut resp = self.resp;
        resp.headers = encode(&self.headers, Kind::Headers);
        resp.request_headers = encode(&self.request_headers, Kind::Headers);
        resp.context = encode(&self.context, Kind::Context);
        resp
    }
}

fn encode(pairs: &[(String, String)], kind: Kind) -> fields::Fields {
    fields::encode(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), kind)
}

/// Where the fake clock starts: 2023-11-14T22:13:20Z, a round 1.7 × 10¹² ms.
pub const START_MS: u64 = 1_700_000_000_000;

/// Sets the fake clock (milliseconds since the Unix epoch).
pub fn set_now_ms(ms: u64) {
    fake::with(|h| h.now_ms = ms);
}

/// Moves the fake clock forward; counters roll into new windows and keys expire accordingly.
pub fn advance_ms(ms: u64) {
    fake::with(|h| h.now_ms = h.now_ms.saturating_add(ms));
}

/// Every line logged through [`host::log`](crate::host::log) on this thread since the last
/// [`reset`], oldest first.
pub fn logs() -> Vec<(Level, String)> {
    fake::with(|h| h.logs.clone())
}

/// Clears the fake host of this thread: counters, keys, logs; the clock goes back to
/// [`START_MS`] and the random generator to its seed.
pub fn reset() {
    fake::with(|h| *h = fake::FakeHost::default());
}

/// The fake host behind [`host`](crate::host) on targets other than `wasm32`.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::START_MS;
    use crate::host::{Level, WindowCount};

    #[derive(Debug)]
    pub(crate) struct FakeHost {
        pub(crate) now_ms: u64,
        pub(crate) logs: Vec<(Level, String)>,
        counters: HashMap<String, Counter>,
        kv: HashMap<String, Entry>,
        rng: u64,
    }

    #[derive(Debug)]
    struct Counter {
        window_ms: u64,
        start: u64,
        current: i64,
        previous: i64,
    }

    #[derive(Debug)]
    struct Entry {
        value: String,
        expires_at: Option<u64>,
    }

    impl Default for FakeHost {
        fn default() -> Self {
            FakeHost {
                now_ms: START_MS,
                logs: Vec::new(),
                counters: HashMap::new(),
                kv: HashMap::new(),
                rng: 0x9E37_79B9_7F4A_7C15,
            }
        }
    }

    impl FakeHost {
        /// The live value of `key`, dropping it if it has expired.
        fn live(&mut self, key: &str) -> Option<&str> {
            let now = self.now_ms;
            if self.kv.get(key).is_some_and(|e| e.expires_at.is_some_and(|t| t <= now)) {
                self.kv.remove(key);
            }
            self.kv.get(key).map(|e| e.value.as_str())
        }

        fn store(&mut self, key: &str, value: Option<&str>, ttl_ms: u64) {
            match value {
                Some(value) => {
                    let expires_at = (ttl_ms > 0).then(|| self.now_ms.saturating_add(ttl_ms));
                    self.kv.insert(key.to_owned(), Entry { value: value.to_owned(), expires_at });
                }
                None => {
                    self.kv.remove(key);
                }
            }
        }
    }

    thread_local! {
        static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
    }

    pub(crate) fn with<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
        HOST.with_borrow_mut(f)
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_owned())));
    }

    pub(crate) fn now_ms() -> u64 {
        with(|h| h.now_ms)
    }

    pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
        with(|h| {
            (0..len.min(4096))
                .map(|_| {
                    // xorshift64*: deterministic, fine for tests, not for secrets.
                    h.rng ^= h.rng >> 12;
                    h.rng ^= h.rng << 25;
                    h.rng ^= h.rng >> 27;
                    (h.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect()
        })
    }

    pub(crate) fn counter_incr(key: &str, delta: i64, window_ms: u64) -> WindowCount {
        with(|h| {
            let window_ms = window_ms.max(1);
            let start = h.now_ms - h.now_ms % window_ms;
            let counter =
                h.counters.entry(key.to_owned()).or_insert(Counter { window_ms, start, current: 0, previous: 0 });
            if counter.window_ms != window_ms {
                // A new window length starts the counter afresh.
                *counter = Counter { window_ms, start, current: 0, previous: 0 };
            }
            if counter.start != start {
                let just_before = counter.start.checked_add(window_ms) == Some(start);
                counter.previous = if just_before { counter.current } else { 0 };
                counter.current = 0;
                counter.start = start;
            }
            counter.current = counter.current.saturating_add(delta);
            WindowCount {
                current: counter.current,
                previous: counter.previous,
                remaining_ms: start.saturating_add(window_ms) - h.now_ms,
            }
        })
    }

    pub(crate) fn kv_get(key: &str) -> Option<String> {
        with(|h| h.live(key).map(str::to_owned))
    }

    pub(crate) fn kv_set(key: &str, value: &str, ttl_ms: u64) {
        with(|h| h.store(key, Some(value), ttl_ms));
    }

    pub(crate) fn kv_compare_and_swap(key: &str, expected: Option<&str>, new: Option<&str>, ttl_ms: u64) -> bool {
        with(|h| {
            if h.live(key) != expected {
                return false;
            }
            h.store(key, new, ttl_ms);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;
    use crate::{Action, Plugin};

    #[test]
    fn request_builder_sets_every_part() {
        let req = request("POST", "/api/users")
            .query("page=2")
            .header("X-Key", "k")
            .header("accept", "a")
            .header("accept", "b")
            .client_ip("10.1.2.3")
            .route("api")
            .tls(TlsInfo { server_name: Some("api.example.com".into()), client_subject: None })
            .context("user", "ada")
            .build();
        assert_eq!((req.method(), req.path(), req.query()), ("POST", "/api/users", "page=2"));
        assert_eq!(req.header_str("x-key"), Some("k"));
        assert_eq!(req.headers("accept").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((req.client_ip(), req.route()), ("10.1.2.3", "api"));
        assert_eq!(req.tls().and_then(|t| t.server_name.as_deref()), Some("api.example.com"));
        assert_eq!(req.context("user"), Some("ada"));
        assert_eq!(req.changes(), Default::default());
    }

    #[test]
    fn response_builder_sets_every_part() {
        let resp = response(404)
            .header("Content-Type", "text/plain")
            .request("DELETE", "/x")
            .request_header("x-user", "ada")
            .route("r")
            .context("k", "v")
            .build();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
        assert_eq!((resp.request_method(), resp.request_path()), ("DELETE", "/x"));
        assert_eq!(resp.request_header("X-User").as_deref(), Some("ada"));
        assert_eq!(resp.route(), "r");
        assert_eq!(resp.context("k"), Some("v"));
    }

    #[test]
    fn clock_is_fixed_until_moved() {
        reset();
        assert_eq!(host::now_ms(), START_MS);
        advance_ms(5);
        assert_eq!(host::now_ms(), START_MS + 5);
        set_now_ms(42);
        assert_eq!(host::now_ms(), 42);
    }

    #[test]
    fn counters_count_in_epoch_aligned_windows() {
        reset();
        set_now_ms(60_000 * 10 + 15_000); // a quarter into a window
        let c = host::counter_incr("hits", 1, 60_000);
        assert_eq!(c, host::WindowCount { current: 1, previous: 0, remaining_ms: 45_000 });
        assert_eq!(host::counter_incr("hits", 2, 60_000).current, 3);
        assert_eq!(host::counter_incr("other", 1, 60_000).current, 1);

        advance_ms(45_000); // the next window
        let c = host::counter_incr("hits", 1, 60_000);
        assert_eq!((c.current, c.previous, c.remaining_ms), (1, 3, 60_000));

        advance_ms(120_000); // two windows later: the previous one was empty
        let c = host::counter_incr("hits", 0, 60_000);
        assert_eq!((c.current, c.previous), (0, 0));

        // A window of 0 is treated as 1 ms instead of dividing by zero.
        assert_eq!(host::counter_incr("zero", 1, 0).remaining_ms, 1);
    }

    #[test]
    fn kv_expires_and_compares_and_swaps() {
        reset();
        host::kv_set("session", "ada", 1_000);
        host::kv_set("forever", "x", 0);
        assert_eq!(host::kv_get("session").as_deref(), Some("ada"));
        advance_ms(999);
        assert!(host::kv_get("session").is_some());
        advance_ms(1);
        assert_eq!(host::kv_get("session"), None, "expired at the TTL");
        assert!(host::kv_get("forever").is_some());

        assert!(!host::kv_compare_and_swap("n", Some("1"), Some("2"), 0));
        assert!(host::kv_compare_and_swap("n", None, Some("1"), 0));
        assert!(host::kv_compare_and_swap("n", Some("1"), Some("2"), 0));
        assert!(!host::kv_compare_and_swap("n", Some("1"), Some("3"), 0));
        assert!(host::kv_compare_and_swap("n", Some("2"), None, 0));
        assert_eq!(host::kv_get("n"), None, "swapping in None deletes");

        host::kv_set("lease", "a", 10);
        advance_ms(10);
        assert!(host::kv_compare_and_swap("lease", None, Some("b"), 0), "an expired key counts as absent");
    }

    #[test]
    fn reset_clears_everything() {
        host::kv_set("k", "v", 0);
        host::warn("w");
        advance_ms(1);
        reset();
        assert_eq!(host::kv_get("k"), None);
        assert!(logs().is_empty());
        assert_eq!(host::now_ms(), START_MS);
    }

    #[derive(Debug)]
    struct Strict(u8);

    impl Plugin for Strict {
        fn init(config: Config) -> Result<Self, String> {
            #[derive(serde::Deserialize)]
            struct C {
                level: u8,
            }
            Ok(Strict(config.json::<C>()?.level))
        }
    }

    #[test]
    fn init_runs_the_plugin_init_and_defaults_are_not_implemented() {
        let mut p: Strict = init(r#"{"level": 3}"#).unwrap();
        assert_eq!(p.0, 3);
        assert!(init::<Strict>("{}").unwrap_err().contains("missing field `level`"));
        let mut req = request("GET", "/").build();
        assert_eq!(p.on_request(&mut req), Action::not_implemented());
    }
}
