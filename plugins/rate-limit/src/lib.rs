//! `rate-limit`: at most `limit` requests per `window_ms` for each client, header value, route or
//! consumer, counted in the gateway's shared counters.
//!
//! The counters live in the host ([`host::counter_incr`]), not in the plugin, so one limit holds
//! across every instance on every worker, and a config reload does not reset it.
//!
//! - `key` says whom a limit applies to: `client_ip` (default), `route`, `header:NAME`, or
//!   `context:KEY`, a request context entry an earlier plugin set (`context:consumer`, from
//!   `api-key-auth`). A request without that header or entry counts under the empty key, or is
//!   not limited at all with `skip_missing = true`.
//! - `algorithm = "sliding_window"` (default) counts the current window plus the share of the
//!   previous window that a window ending now would still overlap ([`WindowCount::sliding`]),
//!   which smooths the burst a `"fixed_window"` allows at its edges.
//! - Over the limit: `429` with `Retry-After` (seconds until one more request fits, rounded up,
//!   at least 1), the `RateLimit-*` headers below and the body `{"error":"rate limit exceeded"}`.
//!   A refused request does not count, so a client that keeps retrying is not locked out longer.
//! - Within the limit the response carries `RateLimit-Limit`, `RateLimit-Remaining` (requests
//!   left now) and `RateLimit-Reset` (seconds until the current window ends; on a 429, the same
//!   as `Retry-After`). on_request hands these headers to the gateway with its changes
//!   ([`Request::set_response_header`]), so there is no on_response hook to call, and keeps the
//!   numbers in the request context ([`LIMIT_KEY`], [`REMAINING_KEY`], [`RESET_KEY`]). With several
//!   limiters on one route, the headers report the one with the fewest requests left.
//!
//! See the README for every config key.

use serde::Deserialize;
use sluice_sdk::check::is_header_name;
use sluice_sdk::host::WindowCount;
use sluice_sdk::prelude::*;

/// The context key of the limit.
pub const LIMIT_KEY: &str = "ratelimit-limit";
/// The context key of the requests left.
pub const REMAINING_KEY: &str = "ratelimit-remaining";
/// The context key of the seconds until the window ends (or, refused, until a request fits).
pub const RESET_KEY: &str = "ratelimit-reset";

/// The body of every 429.
pub const LIMITED_BODY: &str = r#"{"error":"rate limit exceeded"}"#;

/// The plugin, made from its config.
#[derive(Debug)]
pub struct RateLimit {
    /// Requests allowed per window.
    limit: u32,
    /// `limit` as the `RateLimit-Limit` header and context value, written once.
    limit_text: String,
    /// The window length.
    window_ms: u64,
    algorithm: Algorithm,
    /// Whom the limit applies to.
    key: Key,
    /// Whether a request without its key goes unlimited (else it counts under "").
    skip_missing: bool,
}

/// How requests in the window are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Algorithm {
    #[default]
    SlidingWindow,
    FixedWindow,
}

/// Whom a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    ClientIp,
    Route,
    Header(String),
    Context(String),
}

/// `[plugin.config]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    limit: u32,
    #[serde(default = "default_window_ms")]
    window_ms: u64,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    skip_missing: bool,
}

fn default_window_ms() -> u64 {
    60_000
}

fn default_key() -> String {
    "client_ip".into()
}

impl Key {
    fn parse(text: &str) -> Result<Key, String> {
        let key = match text.split_once(':') {
            None if text == "client_ip" => Key::ClientIp,
            None if text == "route" => Key::Route,
            Some(("header", name)) if is_header_name(name) => Key::Header(name.to_ascii_lowercase()),
            Some(("context", name)) if !name.is_empty() => Key::Context(name.to_string()),
            _ => {
                return Err(format!(
                    "rate-limit: `key` = {text:?} is not valid; use \"client_ip\", \"route\", \"header:NAME\" or \"context:KEY\""
                ));
            }
        };
        Ok(key)
    }
}

impl Plugin for RateLimit {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        if settings.limit == 0 {
            return Err("rate-limit: `limit` must be at least 1".into());
        }
        if settings.window_ms == 0 {
            return Err("rate-limit: `window_ms` must be at least 1".into());
        }
        Ok(RateLimit {
            limit: settings.limit,
            limit_text: settings.limit.to_string(),
            window_ms: settings.window_ms,
            algorithm: settings.algorithm,
            key: Key::parse(&settings.key)?,
            skip_missing: settings.skip_missing,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let Some(key) = self.key_of(req) else {
            return Action::Continue;
        };
        let count = host::counter_incr(key, 1, self.window_ms);
        let used = match self.algorithm {
            Algorithm::SlidingWindow => count.sliding(self.window_ms),
            Algorithm::FixedWindow => count.current,
        };
        let limit = i64::from(self.limit);
        if used <= limit {
            stash(req, &self.limit_text, limit - used.max(0), seconds(count.remaining_ms));
            return Action::Continue;
        }
        // A refused request does not count. (Should a window end between the two calls, this
        // takes one from the new window instead: one request too generous, at worst.)
        host::counter_incr(key, -1, self.window_ms);
        let retry_after = seconds(self.wait_ms(count));
        stash(req, &self.limit_text, 0, retry_after);
        let retry_after = retry_after.to_string();
        Action::respond(429)
            .header("retry-after", &retry_after)
            .header("ratelimit-limit", &self.limit_text)
            .header("ratelimit-remaining", "0")
            .header("ratelimit-reset", retry_after)
            .header("content-type", "application/json")
            .body(LIMITED_BODY)
    }
}

impl RateLimit {
    /// The counter key of this request; `None` when it is not to be limited.
    fn key_of<'r>(&self, req: &'r Request) -> Option<&'r str> {
        let value = match &self.key {
            Key::ClientIp => Some(req.client_ip()),
            Key::Route => Some(req.route()),
            Key::Header(name) => req.header_str(name),
            Key::Context(name) => req.context(name),
        };
        value.or((!self.skip_missing).then_some(""))
    }

    /// Milliseconds until one more request fits, from the counts a refused request saw (its
    /// own increment taken back).
    fn wait_ms(&self, count: WindowCount) -> u64 {
        if self.algorithm == Algorithm::FixedWindow {
            return count.remaining_ms;
        }
        let window = u128::from(self.window_ms);
        let left = u128::from(count.remaining_ms).min(window);
        let limit = u128::from(self.limit);
        let current = u128::try_from(count.current.saturating_sub(1)).unwrap_or(0);
        let previous = u128::try_from(count.previous).unwrap_or(0);
        let wait = if current < limit {
            // This window has room: wait until the previous window's share has shrunk enough.
            left.saturating_sub(last_fit(previous, limit - current, window))
        } else {
            // This window is full: it must end, and then it becomes the previous window, whose
            // share has to shrink in the next one.
            left + window - last_fit(current, limit, window)
        };
        u64::try_from(wait).unwrap_or(u64::MAX)
    }
}

/// The most time left in a window at which the sliding estimate's share of a previous window
/// of `previous` requests, `floor(previous * left / window)`, is below `budget` (at least 1).
fn last_fit(previous: u128, budget: u128, window: u128) -> u128 {
    match previous {
        0 => window,
        _ => (budget * window - 1) / previous,
    }
}

/// Whole seconds, rounded up, at least 1.
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// Sets the numbers as response headers and context entries, unless an earlier limiter of this
/// request has fewer requests left. The numbers are written on the stack (`itoa`): this runs on
/// every request, and `to_string` would cost an allocation and the formatting machinery each.
fn stash(req: &mut Request, limit: &str, remaining: i64, reset_s: u64) {
    if req.context_as::<i64>(REMAINING_KEY).is_some_and(|theirs| theirs < remaining) {
        return;
    }
    let (mut remaining_text, mut reset_text) = (itoa::Buffer::new(), itoa::Buffer::new());
    for (key, header, value) in [
        (LIMIT_KEY, "ratelimit-limit", limit),
        (REMAINING_KEY, "ratelimit-remaining", remaining_text.format(remaining)),
        (RESET_KEY, "ratelimit-reset", reset_text.format(reset_s)),
    ] {
        req.set_response_header(header, value);
        req.set_context(key, value);
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing;
    use sluice_sdk::{HeaderOp, Reply};

    const MINUTE: u64 = 60_000;
    /// The start of a minute on the fake clock.
    const T0: u64 = 1_000 * MINUTE;

    fn plugin(config: &str) -> RateLimit {
        testing::init(config).expect("a valid config")
    }

    /// Sends a request from `ip`; the reply if refused, else the numbers stashed in the context.
    fn send(p: &mut RateLimit, req: testing::RequestBuilder) -> Result<[String; 3], Reply> {
        let mut req = req.build();
        match p.on_request(&mut req) {
            Action::Continue => Ok([LIMIT_KEY, REMAINING_KEY, RESET_KEY].map(|k| req.context(k).unwrap().to_string())),
            action => Err(action.reply().cloned().expect("continue or respond")),
        }
    }

    fn from(ip: &str) -> testing::RequestBuilder {
        testing::request("GET", "/").client_ip(ip)
    }

    fn limited(retry_after: &str) -> Reply {
        Reply::new(429)
            .header("retry-after", retry_after)
            .header("ratelimit-limit", "3")
            .header("ratelimit-remaining", "0")
            .header("ratelimit-reset", retry_after)
            .header("content-type", "application/json")
            .body(LIMITED_BODY)
    }

    #[test]
    fn a_fixed_window_allows_the_limit_then_refuses_until_it_ends() {
        testing::reset();
        testing::set_now_ms(T0 + 15_000);
        let mut p = plugin(r#"{"limit": 3, "algorithm": "fixed_window"}"#);
        for remaining in ["2", "1", "0"] {
            assert_eq!(send(&mut p, from("10.0.0.1")), Ok(["3".into(), remaining.into(), "45".into()]));
        }
        assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("45")));
        testing::advance_ms(44_001);
        assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("1")), "999 ms left rounds up to 1 s");
        assert!(send(&mut p, from("10.0.0.2")).is_ok(), "another client has its own count");
        testing::advance_ms(999);
        assert_eq!(send(&mut p, from("10.0.0.1")), Ok(["3".into(), "2".into(), "60".into()]));
    }

    #[test]
    fn a_sliding_window_waits_for_a_full_window_to_shrink() {
        testing::reset();
        testing::set_now_ms(T0 + 15_000);
        let mut p = plugin(r#"{"limit": 3}"#);
        for _ in 0..3 {
            assert!(send(&mut p, from("10.0.0.1")).is_ok());
        }
        // 45 s left of this window, then 1 ms into the next one until 3 × 59 999 / 60 000 < 3.
        for _ in 0..5 {
            assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("46")));
        }
        testing::advance_ms(45_000);
        assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("1")));
        testing::advance_ms(1);
        let numbers = send(&mut p, from("10.0.0.1")).expect("the refused requests were not counted");
        assert_eq!(numbers, ["3".to_string(), "0".into(), "60".into()], "1 + 3 × 59 999 / 60 000 = 3");
    }

    #[test]
    fn a_sliding_window_counts_the_overlapping_share_of_the_previous_window() {
        testing::reset();
        testing::set_now_ms(T0);
        host::counter_incr("10.0.0.1", 6, MINUTE);
        testing::advance_ms(MINUTE + 10_000);
        let mut p = plugin(r#"{"limit": 3}"#);
        // 1 + 6 × 50/60 = 6 > 3; it fits once 6 × left / 60 000 < 3, at 29 999 ms left.
        assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("21")));
        testing::advance_ms(20_000);
        assert_eq!(send(&mut p, from("10.0.0.1")), Err(limited("1")));
        testing::advance_ms(1);
        assert_eq!(send(&mut p, from("10.0.0.1")), Ok(["3".into(), "0".into(), "30".into()]));
    }

    #[test]
    fn keys_come_from_headers_routes_and_the_context() {
        testing::reset();
        let mut by_header = plugin(r#"{"limit": 1, "key": "header:X-Api-Key"}"#);
        assert!(send(&mut by_header, from("1.1.1.1").header("x-api-key", "a")).is_ok());
        assert!(send(&mut by_header, from("2.2.2.2").header("x-api-key", "a")).is_err(), "same key, other ip");
        assert!(send(&mut by_header, from("1.1.1.1").header("x-api-key", "b")).is_ok());
        assert!(send(&mut by_header, from("1.1.1.1")).is_ok(), "missing: counted under \"\"");
        assert!(send(&mut by_header, from("1.1.1.1")).is_err());

        testing::reset();
        let mut by_context = plugin(r#"{"limit": 1, "key": "context:consumer", "skip_missing": true}"#);
        assert!(send(&mut by_context, from("1.1.1.1").context("consumer", "alice")).is_ok());
        assert!(send(&mut by_context, from("1.1.1.1").context("consumer", "alice")).is_err());
        assert!(send(&mut by_context, from("1.1.1.1").context("consumer", "bob")).is_ok());
        for _ in 0..3 {
            let mut req = from("1.1.1.1").build();
            assert!(by_context.on_request(&mut req).is_continue(), "skip_missing: not limited");
            assert_eq!(req.changes(), Default::default(), "and no numbers for the response");
        }

        testing::reset();
        let mut by_route = plugin(r#"{"limit": 1, "key": "route"}"#);
        assert!(send(&mut by_route, from("1.1.1.1").route("a")).is_ok());
        assert!(send(&mut by_route, from("2.2.2.2").route("a")).is_err());
        assert!(send(&mut by_route, from("2.2.2.2").route("b")).is_ok());
    }

    #[test]
    fn the_numbers_go_into_the_response_headers_and_the_context() {
        testing::reset();
        testing::set_now_ms(T0 + 43_000);
        let mut p = plugin(r#"{"limit": 3, "algorithm": "fixed_window"}"#);
        let mut req = from("1.1.1.1").build();
        assert!(p.on_request(&mut req).is_continue());
        assert_eq!(
            req.changes().response_headers,
            [
                HeaderOp::Set("ratelimit-limit".into(), "3".into()),
                HeaderOp::Set("ratelimit-remaining".into(), "2".into()),
                HeaderOp::Set("ratelimit-reset".into(), "17".into()),
            ]
        );
        assert_eq!(req.context(RESET_KEY), Some("17"));
        let mut resp = testing::response(200).build();
        assert_eq!(p.on_response(&mut resp), ResponseAction::not_implemented(), "no on_response hook");
    }

    #[test]
    fn several_limiters_report_the_one_closest_to_its_limit() {
        testing::reset();
        testing::set_now_ms(T0);
        let mut wide = plugin(r#"{"limit": 100, "key": "route"}"#);
        let mut narrow = plugin(r#"{"limit": 2, "key": "header:x-user"}"#);
        let mut req = from("1.1.1.1").header("x-user", "u").build();
        assert!(narrow.on_request(&mut req).is_continue());
        assert!(wide.on_request(&mut req).is_continue());
        assert_eq!((req.context(LIMIT_KEY), req.context(REMAINING_KEY)), (Some("2"), Some("1")));
        let remaining: Vec<_> = req
            .changes()
            .response_headers
            .into_iter()
            .filter_map(|op| match op {
                HeaderOp::Set(name, value) if name == "ratelimit-remaining" => Some(value),
                _ => None,
            })
            .collect();
        assert_eq!(remaining, ["1"], "only the narrower limiter set the headers");
    }

    #[test]
    fn waits_stay_in_range_at_the_edges() {
        let p = plugin(r#"{"limit": 4294967295, "window_ms": 18446744073709551615}"#);
        let count = WindowCount { current: i64::MAX, previous: i64::MAX, remaining_ms: u64::MAX };
        assert_eq!(p.wait_ms(count), u64::MAX);
        let count = WindowCount { current: i64::MIN, previous: i64::MIN, remaining_ms: 0 };
        assert_eq!(p.wait_ms(count), 0);
        assert_eq!(
            (seconds(0), seconds(1), seconds(1_000), seconds(1_001), seconds(u64::MAX)),
            (1, 1, 1, 2, 18446744073709552)
        );
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        for (config, expected) in [
            ("{}", "missing field `limit`"),
            (r#"{"limit": 0}"#, "`limit` must be at least 1"),
            (r#"{"limit": -1}"#, "invalid value: integer `-1`, expected u32"),
            (r#"{"limit": 1, "window_ms": 0}"#, "`window_ms` must be at least 1"),
            (
                r#"{"limit": 1, "algorithm": "leaky"}"#,
                "unknown variant `leaky`, expected `sliding_window` or `fixed_window`",
            ),
            (r#"{"limit": 1, "key": "ip"}"#, "`key` = \"ip\" is not valid; use \"client_ip\", \"route\""),
            (r#"{"limit": 1, "key": "header:"}"#, "`key` = \"header:\" is not valid"),
            (r#"{"limit": 1, "key": "header:x user"}"#, "`key` = \"header:x user\" is not valid"),
            (r#"{"limit": 1, "key": "context:"}"#, "`key` = \"context:\" is not valid"),
            (r#"{"limit": 1, "key": "cookie:a"}"#, "`key` = \"cookie:a\" is not valid"),
            (r#"{"limit": 1, "burst": 2}"#, "unknown field `burst`"),
        ] {
            let err = testing::init::<RateLimit>(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
