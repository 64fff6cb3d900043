//! `testkit`: the plugin the gateway's end-to-end tests load, one behaviour per config.
//!
//! The config picks a mode: `{"mode": "tag", "name": "a", "rewrite_path": "/x"}`. Keys: `mode`
//! (required), `name` (default `testkit`), `rewrite_path` (tag mode only), `window_ms` (counter
//! mode only, default 60000); any other key is an error. Each mode implements only the hooks it lists; the others answer "not implemented", so
//! the gateway stops calling them.
//!
//! | mode | hooks | behaviour |
//! |---|---|---|
//! | `tag` | on_request, on_response | marks requests and responses with the plugin's name; answers when asked by header |
//! | `select` | select_backend | picks the backend whose zone is the `x-zone` request header |
//! | `counter` | on_request, on_response | counts requests and instances in shared counters, reports them in `x-count` and `x-inits` |
//! | `loop` | on_request | spins forever when `x-loop` is present |
//! | `hog` | on_request | allocates without end when `x-hog` is present; stores in shared state without end when `x-hog-state` is |
//! | `trap` | on_request | panics when `x-trap` is present; sets an invalid header value when `x-invalid` is, adds 2000 headers when `x-flood` is, answers with as many when `x-flood-reply` is |
//! | `init-fail` | none | `init` fails |
//! | `bench` | on_request | reads two headers and sets one: a cheap, typical hook |
//! | `noop` | on_request | continues without reading or changing anything: the cost of a call itself |
//! | `build` | on_response | stamps responses with the build marker [`BUILD`] |
//! | `tls` | on_request | reports the TLS facts of the request in request headers |
//!
//! See [`Testkit`] for the exact behaviour of each mode.

use serde::Deserialize;
use sluice_sdk::prelude::*;

/// The valid modes, as the init error lists them.
pub const MODES: &str = "tag, select, counter, loop, hog, trap, init-fail, bench, noop, build, tls";

/// How many headers trap mode's floods carry: more than the gateway takes from one hook (1000),
/// few enough to be made well within the default 20 ms deadline.
pub const FLOOD: usize = 2000;

/// The marker `build` mode puts in `x-build`. The reload tests make a second build of this plugin
/// by replacing these bytes in the component with another marker of the same length.
pub const BUILD: &str = "sluice-testkit-build-A";

/// The context key counter mode keeps the count under, from on_request to on_response.
pub const COUNT_KEY: &str = "count";

/// The shared counter of requests in counter mode.
pub const HITS: &str = "hits";

/// The shared counter of instances initialised in counter mode.
pub const INITS: &str = "inits";

/// The size of the values hog mode stores in shared state.
pub const HOG_VALUE: usize = 64 * 1024;

/// The context key tag mode appends plugin names to.
pub const TRAIL_KEY: &str = "trail";

/// The plugin, made from its config.
///
/// - `tag`: on_request sets request header `x-tag-<name>: <name>`, appends `<name>` to the
///   context entry `trail` (comma-separated: `a,b`), and sets the path to `rewrite_path` when
///   configured. Then, if the request has header `x-respond-<name>: <status>` with a status of
///   100 to 999, it answers with that status, header `x-responded-by: <name>` and body
///   `responded by <name>` (the changes above still apply); otherwise it continues. on_response
///   sets response headers `x-seen-<name>: <status as this hook sees it>` and
///   `x-trail-<name>: <context trail as this hook sees it, empty when absent>`.
/// - `select`: select_backend returns the index of the first backend whose zone equals the
///   request header `x-zone`; `Selection::Default` when the header is absent or nothing matches.
/// - `counter`: init adds 1 to the shared counter `inits`; on_request adds 1 to the shared
///   counter `hits` and stores its current count in the context entry `count`; on_response sets
///   `x-count: <that entry>` (no header when the entry is absent) and `x-inits: <current count of
///   inits>`, the number of instances made so far. Both counters use windows of `window_ms`
///   (default 60 000; counters restart at every window boundary, aligned to the epoch, so a test
///   that must not see a restart sets a huge window such as 9223372036854775807).
/// - `loop`: on_request spins forever when the request has header `x-loop`, else continues.
/// - `hog`: on_request allocates 1 MiB chunks and keeps them, forever, when the request has header
///   `x-hog`; stores values of [`HOG_VALUE`] bytes under new keys of the shared state, forever,
///   when it has `x-hog-state`; else continues.
/// - `trap`: on_request panics with `testkit trap` when the request has header `x-trap`; with
///   `x-invalid` it sets `x-out` to a value with a line break (which the gateway must refuse); with
///   `x-flood` it adds [`FLOOD`] headers `x-flood-N` (more than one hook may), and with
///   `x-flood-reply` it answers with as many; else it continues.
/// - `init-fail`: init fails with `testkit init refused: bad config`.
/// - `bench`: on_request reads `user-agent` and `accept`, sets `x-bench: 1`, continues.
/// - `build`: on_response sets `x-build: <BUILD>` (the constant [`BUILD`]).
/// - `tls`: on_request sets request headers `x-tls-server-name` and `x-tls-client-subject` to the
///   request's TLS facts (`-` for a fact that is absent), or `x-tls: none` when the request did
///   not come over TLS.
#[derive(Debug)]
pub struct Testkit {
    mode: Mode,
    name: String,
    rewrite_path: Option<String>,
    window_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tag,
    Select,
    Counter,
    Loop,
    Hog,
    Trap,
    Bench,
    Noop,
    Build,
    Tls,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rewrite_path: Option<String>,
    #[serde(default)]
    window_ms: Option<u64>,
}

impl Plugin for Testkit {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        let mode = match settings.mode.as_str() {
            "tag" => Mode::Tag,
            "select" => Mode::Select,
            "counter" => Mode::Counter,
            "loop" => Mode::Loop,
            "hog" => Mode::Hog,
            "trap" => Mode::Trap,
            "bench" => Mode::Bench,
            "noop" => Mode::Noop,
            "build" => Mode::Build,
            "tls" => Mode::Tls,
            "init-fail" => return Err("testkit init refused: bad config".into()),
            other => {
                return Err(format!("testkit: unknown mode {other:?}; valid modes: {MODES}"));
            }
        };
        if settings.rewrite_path.is_some() && mode != Mode::Tag {
            return Err("testkit: rewrite_path is only valid in mode \"tag\"".into());
        }
        if settings.window_ms.is_some() && mode != Mode::Counter {
            return Err("testkit: window_ms is only valid in mode \"counter\"".into());
        }
        let window_ms = settings.window_ms.unwrap_or(60_000);
        if mode == Mode::Counter {
            host::counter_incr(INITS, 1, window_ms);
        }
        Ok(Testkit {
            mode,
            name: settings.name.unwrap_or_else(|| "testkit".into()),
            rewrite_path: settings.rewrite_path,
            window_ms,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        match self.mode {
            Mode::Tag => self.tag_request(req),
            Mode::Counter => {
                let count = host::counter_incr(HITS, 1, self.window_ms).current;
                req.set_context(COUNT_KEY, count.to_string());
                Action::Continue
            }
            Mode::Loop => {
                if req.header_str("x-loop").is_some() {
                    let mut spins = 0u64;
                    loop {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                }
                Action::Continue
            }
            Mode::Hog => {
                if req.header_str("x-hog").is_some() {
                    let mut kept: Vec<Vec<u8>> = Vec::new();
                    loop {
                        kept.push(vec![0u8; 1 << 20]);
                        std::hint::black_box(&mut kept);
                    }
                }
                if req.header_str("x-hog-state").is_some() {
                    let value = "x".repeat(HOG_VALUE);
                    for n in 0u64.. {
                        host::kv_set(&format!("hog-{n}"), &value, 0);
                    }
                }
                Action::Continue
            }
            Mode::Trap => {
                if req.header_str("x-trap").is_some() {
                    panic!("testkit trap");
                }
                if req.header_str("x-invalid").is_some() {
                    // Returns normally, with a change the gateway must refuse.
                    req.set_header("x-out", "line\nbreak");
                }
                if req.header_str("x-flood-reply").is_some() {
                    return (0..FLOOD).fold(Action::respond(200), |reply, n| reply.header(format!("x-flood-{n}"), "1"));
                }
                if req.header_str("x-flood").is_some() {
                    for n in 0..FLOOD {
                        req.append_header(format!("x-flood-{n}"), "1");
                    }
                }
                if req.header_str("x-connect").is_some() {
                    req.set_method("CONNECT");
                }
                Action::Continue
            }
            Mode::Bench => {
                std::hint::black_box(req.header_str("user-agent"));
                std::hint::black_box(req.header_str("accept"));
                req.set_header("x-bench", "1");
                Action::Continue
            }
            Mode::Noop => Action::Continue,
            Mode::Tls => {
                match req.tls().cloned() {
                    Some(tls) => {
                        req.set_header("x-tls-server-name", tls.server_name.as_deref().unwrap_or("-"));
                        req.set_header("x-tls-client-subject", tls.client_subject.as_deref().unwrap_or("-"));
                    }
                    None => req.set_header("x-tls", "none"),
                }
                Action::Continue
            }
            Mode::Select | Mode::Build => Action::not_implemented(),
        }
    }

    fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
        match self.mode {
            Mode::Tag => {
                let name = &self.name;
                let status = resp.status().to_string();
                let trail = resp.context(TRAIL_KEY).unwrap_or_default().to_string();
                resp.set_header(format!("x-seen-{name}"), status);
                resp.set_header(format!("x-trail-{name}"), trail);
                ResponseAction::Continue
            }
            Mode::Counter => {
                if let Some(count) = resp.context(COUNT_KEY).map(str::to_string) {
                    resp.set_header("x-count", count);
                }
                let inits = host::counter_incr(INITS, 0, self.window_ms).current;
                resp.set_header("x-inits", inits.to_string());
                ResponseAction::Continue
            }
            Mode::Build => {
                resp.set_header("x-build", std::hint::black_box(BUILD));
                ResponseAction::Continue
            }
            _ => ResponseAction::not_implemented(),
        }
    }

    fn select_backend(&mut self, req: &Request, backends: &[Backend]) -> Selection {
        if self.mode != Mode::Select {
            return Selection::not_implemented();
        }
        let Some(zone) = req.header_str("x-zone") else {
            return Selection::Default;
        };
        backends.iter().position(|b| b.zone == zone).map_or(Selection::Default, Selection::Backend)
    }
}

impl Testkit {
    fn tag_request(&mut self, req: &mut Request) -> Action {
        let name = &self.name;
        req.set_header(format!("x-tag-{name}"), name.clone());
        let trail = match req.context(TRAIL_KEY) {
            Some(trail) if !trail.is_empty() => format!("{trail},{name}"),
            _ => name.clone(),
        };
        req.set_context(TRAIL_KEY, trail);
        if let Some(path) = &self.rewrite_path {
            req.set_path(path.clone());
        }
        let asked = req
            .header_str(&format!("x-respond-{name}"))
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|s| (100..=999).contains(s));
        match asked {
            Some(status) => {
                Action::respond(status).header("x-responded-by", name.clone()).body(format!("responded by {name}"))
            }
            None => Action::Continue,
        }
    }
}

export_plugin!(Testkit);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing;
    use sluice_sdk::{HeaderOp, Reply};

    fn plugin(config: &str) -> Testkit {
        testing::init(config).expect("valid config")
    }

    #[test]
    fn tag_marks_the_request_and_appends_to_the_trail() {
        let mut a = plugin(r#"{"mode": "tag", "name": "a"}"#);
        let mut b = plugin(r#"{"mode": "tag", "name": "b"}"#);
        let mut req = testing::request("GET", "/p").build();
        assert!(a.on_request(&mut req).is_continue());
        assert!(b.on_request(&mut req).is_continue());
        assert_eq!(req.header_str("x-tag-a"), Some("a"));
        assert_eq!(req.header_str("x-tag-b"), Some("b"));
        assert_eq!(req.context("trail"), Some("a,b"));
        assert_eq!(
            req.changes().headers,
            [HeaderOp::Set("x-tag-a".into(), "a".into()), HeaderOp::Set("x-tag-b".into(), "b".into())]
        );
        assert_eq!(req.changes().path, None);
    }

    #[test]
    fn tag_uses_testkit_as_the_default_name_and_rewrites_the_path() {
        let mut p = plugin(r#"{"mode": "tag", "rewrite_path": "/x"}"#);
        let mut req = testing::request("GET", "/p").build();
        assert!(p.on_request(&mut req).is_continue());
        assert_eq!(req.header_str("x-tag-testkit"), Some("testkit"));
        assert_eq!(req.context("trail"), Some("testkit"));
        assert_eq!(req.path(), "/x");
        assert_eq!(req.changes().path.as_deref(), Some("/x"));
    }

    #[test]
    fn tag_responds_when_asked_by_its_header() {
        let mut p = plugin(r#"{"mode": "tag", "name": "a"}"#);
        let mut req = testing::request("GET", "/").header("x-respond-a", "403").build();
        let action = p.on_request(&mut req);
        assert_eq!(action.reply(), Some(&Reply::new(403).header("x-responded-by", "a").body("responded by a")));
        assert_eq!(req.context("trail"), Some("a"), "the trail is kept");

        for ignored in [("x-respond-b", "403"), ("x-respond-a", "nope"), ("x-respond-a", "42")] {
            let mut req = testing::request("GET", "/").header(ignored.0, ignored.1).build();
            assert!(p.on_request(&mut req).is_continue(), "{ignored:?}");
        }
    }

    #[test]
    fn tag_reports_status_and_trail_on_the_response() {
        let mut p = plugin(r#"{"mode": "tag", "name": "a"}"#);
        let mut resp = testing::response(502).context("trail", "a,b").build();
        assert!(p.on_response(&mut resp).is_continue());
        assert_eq!(resp.header_str("x-seen-a"), Some("502"));
        assert_eq!(resp.header_str("x-trail-a"), Some("a,b"));

        let mut resp = testing::response(200).build();
        p.on_response(&mut resp);
        assert_eq!(resp.header_str("x-trail-a"), Some(""));
    }

    #[test]
    fn tag_does_not_implement_select_backend() {
        let mut p = plugin(r#"{"mode": "tag"}"#);
        let req = testing::request("GET", "/").build();
        assert_eq!(p.select_backend(&req, &[]), Selection::not_implemented());
    }

    fn backends() -> Vec<Backend> {
        [("10.0.0.1:80", "east"), ("10.0.0.2:80", "west"), ("10.0.0.3:80", "west")]
            .map(|(address, zone)| Backend { address: address.into(), weight: 1, zone: zone.into() })
            .to_vec()
    }

    #[test]
    fn select_picks_the_first_backend_of_the_zone() {
        let mut p = plugin(r#"{"mode": "select"}"#);
        let pick = |p: &mut Testkit, zone: Option<&str>| {
            let mut req = testing::request("GET", "/");
            if let Some(zone) = zone {
                req = req.header("x-zone", zone);
            }
            p.select_backend(&req.build(), &backends())
        };
        assert_eq!(pick(&mut p, Some("west")), Selection::Backend(1));
        assert_eq!(pick(&mut p, Some("east")), Selection::Backend(0));
        assert_eq!(pick(&mut p, Some("north")), Selection::Default);
        assert_eq!(pick(&mut p, None), Selection::Default);
    }

    #[test]
    fn select_implements_nothing_else() {
        let mut p = plugin(r#"{"mode": "select"}"#);
        let mut req = testing::request("GET", "/").build();
        assert_eq!(p.on_request(&mut req), Action::not_implemented());
        let mut resp = testing::response(200).build();
        assert_eq!(p.on_response(&mut resp), ResponseAction::not_implemented());
    }

    #[test]
    fn counter_counts_requests_and_reports_them_on_the_response() {
        testing::reset();
        let mut p = plugin(r#"{"mode": "counter"}"#);
        assert_eq!(host::counter_incr(INITS, 0, 60_000).current, 1, "init counts itself");
        for expected in 1..=3 {
            let mut req = testing::request("GET", "/").build();
            assert!(p.on_request(&mut req).is_continue());
            assert_eq!(req.context_as::<i64>("count"), Some(expected));
        }
        let mut resp = testing::response(200).context("count", "3").build();
        assert!(p.on_response(&mut resp).is_continue());
        assert_eq!(resp.header_str("x-count"), Some("3"));
        assert_eq!(resp.header_str("x-inits"), Some("1"));

        let mut resp = testing::response(200).build();
        p.on_response(&mut resp);
        assert_eq!(resp.header_str("x-count"), None);

        // A second instance shares the counters.
        let mut other = plugin(r#"{"mode": "counter"}"#);
        let mut req = testing::request("GET", "/").build();
        other.on_request(&mut req);
        assert_eq!(req.context("count"), Some("4"));
        let mut resp = testing::response(200).build();
        other.on_response(&mut resp);
        assert_eq!(resp.header_str("x-inits"), Some("2"));
    }

    #[test]
    fn counter_windows_restart_at_the_boundary_unless_huge() {
        let count = |p: &mut Testkit| {
            let mut req = testing::request("GET", "/").build();
            p.on_request(&mut req);
            req.context_as::<i64>("count").unwrap()
        };
        // The fake host has one namespace, as one [[plugin]] has in the gateway: test one at a time.
        for (config, after_the_minute) in
            [(r#"{"mode": "counter"}"#, 1), (r#"{"mode": "counter", "window_ms": 9223372036854775807}"#, 2)]
        {
            testing::reset();
            testing::set_now_ms(59_999);
            let mut p = plugin(config);
            assert_eq!(count(&mut p), 1, "{config}");
            testing::advance_ms(1);
            assert_eq!(count(&mut p), after_the_minute, "{config}");
        }
    }

    #[test]
    fn limit_modes_continue_without_their_header() {
        for mode in ["loop", "hog", "trap"] {
            let mut p = plugin(&format!(r#"{{"mode": "{mode}"}}"#));
            let mut req = testing::request("GET", "/").header("x-other", "1").build();
            assert!(p.on_request(&mut req).is_continue(), "{mode}");
            assert_eq!(req.changes().headers, [], "{mode}");
        }
    }

    #[test]
    #[should_panic(expected = "testkit trap")]
    fn trap_panics_with_its_header() {
        let mut p = plugin(r#"{"mode": "trap"}"#);
        let mut req = testing::request("GET", "/").header("x-trap", "1").build();
        p.on_request(&mut req);
    }

    #[test]
    fn bench_sets_one_header() {
        let mut p = plugin(r#"{"mode": "bench"}"#);
        let mut req = testing::request("GET", "/").header("user-agent", "bench").header("accept", "*/*").build();
        assert!(p.on_request(&mut req).is_continue());
        assert_eq!(req.changes().headers, [HeaderOp::Set("x-bench".into(), "1".into())]);
    }

    #[test]
    fn build_stamps_responses_only() {
        let mut p = plugin(r#"{"mode": "build"}"#);
        let mut req = testing::request("GET", "/").build();
        assert!(!p.on_request(&mut req).is_continue(), "no on_request in build mode");
        let mut resp = testing::response(200).build();
        assert!(matches!(p.on_response(&mut resp), ResponseAction::Continue));
        assert_eq!(resp.header("x-build").as_deref(), Some(BUILD));
    }

    #[test]
    fn tls_mode_reports_the_tls_facts_in_request_headers() {
        let mut plugin = testing::init::<Testkit>(r#"{"mode": "tls"}"#).unwrap();
        let tls = sluice_sdk::TlsInfo { server_name: Some("a.test".into()), client_subject: None };
        let mut req = testing::request("GET", "/").tls(tls).build();
        assert!(matches!(plugin.on_request(&mut req), Action::Continue));
        assert_eq!(req.header_str("x-tls-server-name"), Some("a.test"));
        assert_eq!(req.header_str("x-tls-client-subject"), Some("-"));
        let mut plain = testing::request("GET", "/").build();
        plugin.on_request(&mut plain);
        assert_eq!(plain.header_str("x-tls"), Some("none"));
    }

    #[test]
    fn init_fail_and_bad_configs_are_refused_with_a_reason() {
        let err = testing::init::<Testkit>(r#"{"mode": "init-fail"}"#).unwrap_err();
        assert_eq!(err, "testkit init refused: bad config");

        let err = testing::init::<Testkit>(r#"{"mode": "dance"}"#).unwrap_err();
        assert_eq!(
            err,
            "testkit: unknown mode \"dance\"; valid modes: tag, select, counter, loop, hog, trap, init-fail, bench, noop, build, tls"
        );

        let err = testing::init::<Testkit>("{}").unwrap_err();
        assert!(err.contains("missing field `mode`"), "{err}");

        let err = testing::init::<Testkit>(r#"{"mode": "tag", "nmae": "a"}"#).unwrap_err();
        assert!(err.contains("unknown field `nmae`"), "{err}");

        let err = testing::init::<Testkit>(r#"{"mode": "counter", "rewrite_path": "/"}"#).unwrap_err();
        assert!(err.contains("only valid in mode \"tag\""), "{err}");

        let err = testing::init::<Testkit>(r#"{"mode": "tag", "window_ms": 1}"#).unwrap_err();
        assert!(err.contains("only valid in mode \"counter\""), "{err}");
    }
}
