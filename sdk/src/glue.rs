//! The glue between the generated exports and a [`Plugin`]: used by [`export_plugin!`] only.
//!
//! It keeps one plugin value per instance (made by `init`; a Wasm instance is single-threaded,
//! so a thread-local is the instance's state), moves WIT records into SDK types without copying
//! the byte lists, and turns the hook's decision and recorded changes back into WIT records.
//! It catches nothing: a panic in a hook traps, and the gateway throws the instance away.
//!
//! [`export_plugin!`]: crate::export_plugin

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::__bindings::sluice::plugin::types as wit;
use crate::fields::{Fields, Kind};
use crate::message::{RequestRecord, ResponseRecord, Text};
use crate::{Action, Backend, Config, Plugin, Reply, Request, Response, ResponseAction, Selection, TlsInfo};

/// Where an instance keeps its plugin value: `None` until `init` succeeds.
pub type State<P> = LocalKey<RefCell<Option<P>>>;

const NOT_INITIALISED: &str = "sluice plugin: hook called before init succeeded";

/// The SDK version, for the `sluice-sdk-version` custom section [`export_plugin!`] embeds.
///
/// [`export_plugin!`]: crate::export_plugin
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The length of [`SDK_VERSION`].
pub const SDK_VERSION_LEN: usize = SDK_VERSION.len();

/// [`SDK_VERSION`] as a byte array, the form a `#[link_section]` static needs.
pub const SDK_VERSION_BYTES: [u8; SDK_VERSION_LEN] = {
    let mut out = [0; SDK_VERSION_LEN];
    let bytes = SDK_VERSION.as_bytes();
    let mut i = 0;
    while i < SDK_VERSION_LEN {
        out[i] = bytes[i];
        i += 1;
    }
    out
};

/// `init`: makes the plugin value, replacing any earlier one.
pub fn init<P: Plugin>(state: &'static State<P>, config: String) -> Result<(), String> {
    state.set(None);
    let plugin = P::init(Config::new(config))?;
    state.set(Some(plugin));
    Ok(())
}

/// `on-request`.
pub fn on_request<P: Plugin>(state: &'static State<P>, request: wit::Request) -> wit::RequestOutcome {
    state.with_borrow_mut(|plugin| {
        let Some(plugin) = plugin else {
            return wit::RequestOutcome {
                action: wit::RequestAction::Respond(reply(Reply::new(500).body(NOT_INITIALISED))),
                changes: no_request_changes(),
            };
        };
        let mut req = Request::from(request);
        let action = plugin.on_request(&mut req);
        let (action, changes) = match action {
            Action::Continue => (wit::RequestAction::Continue, request_changes(req)),
            Action::Respond(r) => (wit::RequestAction::Respond(reply(r)), request_changes(req)),
            Action::NotImplemented => (wit::RequestAction::NotImplemented, no_request_changes()),
        };
        wit::RequestOutcome { action, changes }
    })
}

/// `on-response`.
pub fn on_response<P: Plugin>(state: &'static State<P>, head: wit::ResponseHead) -> wit::ResponseOutcome {
    state.with_borrow_mut(|plugin| {
        let Some(plugin) = plugin else {
            return wit::ResponseOutcome {
                action: wit::ResponseAction::Replace(reply(Reply::new(500).body(NOT_INITIALISED))),
                changes: no_response_changes(),
            };
        };
        let mut resp = Response::from(head);
        let action = plugin.on_response(&mut resp);
        let (action, changes) = match action {
            ResponseAction::Continue => (wit::ResponseAction::Continue, response_changes(resp)),
            ResponseAction::Replace(r) => (wit::ResponseAction::Replace(reply(r)), response_changes(resp)),
            ResponseAction::NotImplemented => (wit::ResponseAction::NotImplemented, no_response_changes()),
        };
        wit::ResponseOutcome { action, changes }
    })
}

/// `select-backend`.
pub fn select_backend<P: Plugin>(
    state: &'static State<P>,
    request: wit::Request,
    backends: Vec<wit::Backend>,
) -> wit::Selection {
    state.with_borrow_mut(|plugin| {
        let Some(plugin) = plugin else {
            return wit::Selection::Default;
        };
        let req = Request::from(request);
        let backends: Vec<Backend> = backends.into_iter().map(Backend::from).collect();
        match plugin.select_backend(&req, &backends) {
            // An index past u32::MAX is out of range anyway; the gateway reports it as such.
            Selection::Backend(i) => wit::Selection::Backend(u32::try_from(i).unwrap_or(u32::MAX)),
            Selection::Default => wit::Selection::Default,
            Selection::NotImplemented => wit::Selection::NotImplemented,
        }
    })
}

impl From<wit::Request> for Request {
    /// Finds the pseudo-header entries (`:method`, `:path`, ...) at the front of `head` and reads
    /// them in place; the rest of it is the headers.
    fn from(r: wit::Request) -> Self {
        let [mut method, mut path, mut query, mut client_ip, mut route] = [const { Text::At(0, 0) }; 5];
        let mut line_len = 0;
        for (name, value) in Fields::entries(&r.head) {
            let value_start = line_len + 8 + name.len();
            let at = Text::At(value_start, value_start + value.len());
            match name {
                b":method" => method = at,
                b":path" => path = at,
                b":query" => query = at,
                b":client-ip" => client_ip = at,
                b":route" => route = at,
                _ if name.starts_with(b":") => {}
                _ => break,
            }
            line_len = value_start + value.len();
        }
        Request {
            method,
            path,
            query,
            headers: Fields::after(r.head, line_len, Kind::Headers),
            client_ip,
            route,
            tls: r.tls.map(|t| TlsInfo { server_name: t.server_name, client_subject: t.client_subject }),
            context: Fields::from_bytes(r.context, Kind::Context),
            changes: RequestRecord::default(),
        }
    }
}

impl From<wit::ResponseHead> for Response {
    fn from(h: wit::ResponseHead) -> Self {
        Response {
            status: h.status,
            headers: Fields::from_bytes(h.headers, Kind::Headers),
            request_method: h.request_method,
            request_path: h.request_path,
            request_headers: Fields::from_bytes(h.request_headers, Kind::Headers),
            route: h.route,
            context: Fields::from_bytes(h.context, Kind::Context),
            changes: ResponseRecord::default(),
        }
    }
}

impl From<wit::Backend> for Backend {
    fn from(b: wit::Backend) -> Self {
        Backend { address: b.address, weight: b.weight, zone: b.zone }
    }
}

fn reply(r: Reply) -> wit::Response {
    wit::Response { status: r.status, headers: r.headers, body: r.body }
}

fn request_changes(mut req: Request) -> wit::RequestChanges {
    let RequestRecord { method, path, query, response_headers } = req.changes;
    let (headers, context) = (req.headers.take_changes(), req.context.take_changes());
    wit::RequestChanges { method, path, query, headers, response_headers, context }
}

fn no_request_changes() -> wit::RequestChanges {
    wit::RequestChanges {
        method: None,
        path: None,
        query: None,
        headers: Vec::new(),
        response_headers: Vec::new(),
        context: Vec::new(),
    }
}

fn response_changes(mut resp: Response) -> wit::ResponseChanges {
    let (headers, context) = (resp.headers.take_changes(), resp.context.take_changes());
    wit::ResponseChanges { status: resp.changes.status, headers, context }
}

fn no_response_changes() -> wit::ResponseChanges {
    wit::ResponseChanges { status: None, headers: Vec::new(), context: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeaderOp;
    use crate::fields::{self, encode};

    /// Records what it saw, changes a bit of everything, and answers by header.
    struct Probe {
        greeting: String,
    }

    impl Plugin for Probe {
        fn init(config: Config) -> Result<Self, String> {
            match config.raw() {
                "fail" => Err("no".into()),
                raw => Ok(Probe { greeting: raw.into() }),
            }
        }

        fn on_request(&mut self, req: &mut Request) -> Action {
            req.set_header("x-greeting", self.greeting.clone());
            req.set_path("/rewritten");
            req.set_context("seen", req.header("x-in").unwrap_or_default());
            req.set_response_header("X-Seen", "yes");
            if req.header_str("x-stop").is_some() {
                return Action::respond(418).header("x-a", "b").body("stopped");
            }
            if req.header_str("x-skip").is_some() {
                return Action::not_implemented();
            }
            Action::Continue
        }

        fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
            resp.set_status(resp.status() + 1);
            let route = resp.route().to_owned();
            resp.append_header("x-route", route);
            ResponseAction::Continue
        }
    }

    thread_local! {
        static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
    }

    fn wit_request(headers: &[(&str, &str)]) -> wit::Request {
        let line = [(":method", "GET"), (":path", "/p"), (":query", ""), (":client-ip", "10.0.0.1"), (":route", "r")];
        wit::Request {
            head: encode(line.into_iter().chain(headers.iter().copied()), Kind::Context).into_bytes(),
            tls: None,
            context: Vec::new(),
        }
    }

    fn wit_head() -> wit::ResponseHead {
        wit::ResponseHead {
            status: 200,
            headers: Vec::new(),
            request_method: "GET".into(),
            request_path: "/p".into(),
            request_headers: Vec::new(),
            route: "api".into(),
            context: Vec::new(),
        }
    }

    #[test]
    fn the_request_line_is_read_in_any_order_and_unknown_entries_are_skipped() {
        let line = [(":method", "PUT"), (":scheme", "https"), (":route", "r"), (":path", "/a"), (":query", "q=1")];
        let head = encode(line.into_iter().chain([(":client-ip", "10.0.0.2"), ("x-h", "1")]), Kind::Context);
        let req = Request::from(wit::Request { head: head.into_bytes(), tls: None, context: Vec::new() });
        assert_eq!((req.method(), req.path(), req.query()), ("PUT", "/a", "q=1"));
        assert_eq!((req.client_ip(), req.route()), ("10.0.0.2", "r"));
        assert_eq!(req.header_entries().collect::<Vec<_>>(), [("x-h", "1")]);
    }

    #[test]
    fn hooks_before_init_answer_500_and_default_selection() {
        PROBE.set(None);
        let out = on_request(&PROBE, wit_request(&[]));
        let wit::RequestAction::Respond(r) = out.action else {
            panic!("expected a response, got {:?}", out.action);
        };
        assert_eq!(r.status, 500);
        assert!(out.changes.headers.is_empty());

        let out = on_response(&PROBE, wit_head());
        assert!(matches!(out.action, wit::ResponseAction::Replace(ref r) if r.status == 500));

        let sel = select_backend(&PROBE, wit_request(&[]), Vec::new());
        assert!(matches!(sel, wit::Selection::Default));

        assert_eq!(init(&PROBE, "fail".into()), Err("no".to_string()));
        assert!(matches!(on_request(&PROBE, wit_request(&[])).action, wit::RequestAction::Respond(_)));
    }

    #[test]
    fn on_request_returns_the_decision_and_the_changes() {
        init(&PROBE, "hello".into()).unwrap();
        let out = on_request(&PROBE, wit_request(&[("x-in", "42")]));
        assert!(matches!(out.action, wit::RequestAction::Continue));
        assert_eq!(out.changes.path.as_deref(), Some("/rewritten"));
        // The flat encodings of the WIT: kind, name length, name, value length, value.
        assert_eq!(out.changes.headers, b"\0\x0a\0\0\0x-greeting\x05\0\0\0hello");
        assert_eq!(out.changes.context, b"\x04\0\0\0seen\x02\0\0\x0042");
        assert_eq!(fields::header_ops(&out.changes.response_headers), [HeaderOp::Set("x-seen".into(), "yes".into())]);

        let out = on_request(&PROBE, wit_request(&[("x-stop", "1")]));
        let wit::RequestAction::Respond(r) = out.action else {
            panic!("expected a response");
        };
        assert_eq!((r.status, r.headers, r.body), (418, vec![("x-a".into(), "b".into())], b"stopped".to_vec()));
        assert_eq!(out.changes.path.as_deref(), Some("/rewritten"), "changes travel with a response too");
    }

    #[test]
    fn not_implemented_drops_changes_and_defaults_say_not_implemented() {
        init(&PROBE, "x".into()).unwrap();
        let out = on_request(&PROBE, wit_request(&[("x-skip", "1")]));
        assert!(matches!(out.action, wit::RequestAction::NotImplemented));
        assert!(out.changes.path.is_none() && out.changes.headers.is_empty());

        let sel = select_backend(&PROBE, wit_request(&[]), Vec::new());
        assert!(matches!(sel, wit::Selection::NotImplemented));
    }

    #[test]
    fn on_response_returns_status_and_header_changes() {
        init(&PROBE, "x".into()).unwrap();
        let out = on_response(&PROBE, wit_head());
        assert!(matches!(out.action, wit::ResponseAction::Continue));
        assert_eq!(out.changes.status, Some(201));
        assert_eq!(fields::header_ops(&out.changes.headers), [HeaderOp::Append("x-route".into(), "api".into())]);
    }

    struct Picker;

    impl Plugin for Picker {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Picker)
        }

        fn select_backend(&mut self, req: &Request, backends: &[Backend]) -> Selection {
            match req.header_str("x-pick") {
                Some("far") => Selection::Backend(usize::MAX),
                _ => backends.iter().position(|b| b.zone == "b").map_or(Selection::Default, Selection::Backend),
            }
        }
    }

    thread_local! {
        static PICKER: RefCell<Option<Picker>> = const { RefCell::new(None) };
    }

    #[test]
    fn select_backend_passes_backends_and_returns_the_index() {
        init(&PICKER, String::new()).unwrap();
        let backends = || {
            ["a", "b"].map(|zone| wit::Backend { address: format!("{zone}:80"), weight: 1, zone: zone.into() }).to_vec()
        };
        assert!(matches!(select_backend(&PICKER, wit_request(&[]), backends()), wit::Selection::Backend(1)));
        assert!(matches!(
            select_backend(&PICKER, wit_request(&[("x-pick", "far")]), backends()),
            wit::Selection::Backend(u32::MAX)
        ));
        assert!(matches!(select_backend(&PICKER, wit_request(&[]), Vec::new()), wit::Selection::Default));
    }

    #[test]
    fn the_request_line_reads_in_place_while_headers_change() {
        let mut req = Request::from(wit_request(&[("a", "1"), ("b", "2"), ("a", "3")]));
        req.remove_header("a");
        req.set_header("c", "4");
        req.set_header("b", "5");
        assert_eq!(
            (req.method(), req.path(), req.query(), req.client_ip(), req.route()),
            ("GET", "/p", "", "10.0.0.1", "r")
        );
        assert_eq!(req.header_entries().collect::<Vec<_>>(), [("c", "4"), ("b", "5")]);
        req.set_path("/new");
        assert_eq!((req.path(), req.changes().path.as_deref()), ("/new", Some("/new")));
    }

    #[test]
    fn sdk_version_bytes_match() {
        assert_eq!(&SDK_VERSION_BYTES, SDK_VERSION.as_bytes());
    }
}
