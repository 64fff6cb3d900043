//! What a plugin costs per request: one hook call on a pooled instance against the same logic
//! compiled natively, in the same run.
//!
//! The plugin is `tests/plugins/testkit` built by `scripts/build-plugins`: in `bench` mode its
//! on-request reads `user-agent` and `accept` and sets `x-bench`; in `select` mode its
//! select-backend picks the backend whose zone is the request's `x-zone`.
//!
//! Run: `scripts/build-plugins && cargo bench -p sluice --bench hooks`.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};
use sluice::config::{Isolation, OnError, PluginConfig};
use sluice::plugin::bindings::types::Backend;
use sluice::plugin::chain::{self, Chain, Target};
use sluice::plugin::{LoadedPlugin, PluginRuntime};

fn main() {
    divan::main();
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

static RUNTIME: LazyLock<PluginRuntime> =
    LazyLock::new(|| PluginRuntime::new(sluice::plugin::limits::MIN_INSTANCES).expect("the Wasm engine starts"));

fn plugin(mode: &str) -> LoadedPlugin {
    load("testkit", serde_json::json!({ "mode": mode }))
}

fn load(component: &str, config: serde_json::Value) -> LoadedPlugin {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/wasm32-wasip2/release/{component}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins first", path.display());
    let config = PluginConfig {
        name: format!("bench-{component}"),
        path,
        on_error: OnError::Deny,
        timeout: Duration::from_millis(20),
        memory_mb: 16,
        state_mb: 256,
        isolation: Isolation::Pooled,
        config,
    };
    RUNTIME.load(&config).expect("the bench plugin loads")
}

/// A typical small API request.
fn request() -> http::request::Parts {
    Request::get("/api/users?page=2")
        .header("host", "api.example.com")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "application/json")
        .header("x-zone", "green")
        .header("x-request-id", "7f3a9c2e4b1d4e8f9a0b1c2d3e4f5a6b")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[divan::bench]
fn on_request_wasm(bencher: divan::Bencher) {
    let plugins = [plugin("bench")];
    let mut parts = request();
    // One whole exchange first: the host learns that the plugin has no on-response, as it does
    // on the first request of a real gateway.
    let mut chain = Chain::new(&[0], &plugins, "api", None);
    let mut target = Target { path: Cow::Borrowed("/api/users"), query: None };
    assert!(chain.on_request(&mut parts, &mut target, CLIENT).is_ok());
    assert!(chain.on_response(&mut http::Response::new(sluice::body::ResponseBody::empty())).is_ok());
    bencher.bench_local(|| {
        let mut chain = Chain::new(&[0], &plugins, "api", None);
        let mut target = Target { path: Cow::Borrowed("/api/users"), query: Some(Cow::Borrowed("page=2")) };
        let verdict = chain.on_request(&mut parts, &mut target, CLIENT);
        assert!(matches!(verdict, Ok(chain::Verdict::Continue)));
    });
    assert_eq!(parts.headers["x-bench"], "1");
}

/// A hook that does nothing: what a call itself costs (crossing in and out, the request
/// encoded, the outcome read back).
#[divan::bench]
fn on_request_noop(bencher: divan::Bencher) {
    let plugins = [plugin("noop")];
    let mut parts = request();
    let on_request = |parts: &mut http::request::Parts| {
        let mut chain = Chain::new(&[0], &plugins, "api", None);
        let mut target = Target { path: Cow::Borrowed("/api/users"), query: None };
        assert!(matches!(chain.on_request(parts, &mut target, CLIENT), Ok(chain::Verdict::Continue)));
        chain
    };
    assert!(on_request(&mut parts).on_response(&mut http::Response::new(sluice::body::ResponseBody::empty())).is_ok());
    bencher.bench_local(|| drop(on_request(&mut parts)));
}

/// The example api-key-auth plugin: a key check, a header removed, one set, a context entry.
#[divan::bench]
fn on_request_api_key_auth(bencher: divan::Bencher) {
    let plugins = [load("api_key_auth", serde_json::json!({ "keys": { "alice": "key-a", "bob": "key-b" } }))];
    let mut parts = request();
    let on_request = |parts: &mut http::request::Parts| {
        parts.headers.insert("x-api-key", HeaderValue::from_static("key-b"));
        let mut chain = Chain::new(&[0], &plugins, "api", None);
        let mut target = Target { path: Cow::Borrowed("/api/users"), query: None };
        let verdict = chain.on_request(parts, &mut target, CLIENT);
        assert!(matches!(verdict, Ok(chain::Verdict::Continue)));
        chain
    };
    // As in a gateway, the first exchange teaches the host that there is no on-response.
    assert!(on_request(&mut parts).on_response(&mut http::Response::new(sluice::body::ResponseBody::empty())).is_ok());
    bencher.bench_local(|| drop(on_request(&mut parts)));
}

/// The three plugins of the load benchmark's `three` route (api-key-auth, rate-limit, rewrite)
/// over one whole exchange: every on-request in order, then every on-response in reverse.
#[divan::bench]
fn exchange_three_plugins(bencher: divan::Bencher) {
    let plugins = [
        load("api_key_auth", serde_json::json!({ "keys": { "bench": "key-b" } })),
        load("rate_limit", serde_json::json!({ "limit": 1_000_000_000, "key": "context:consumer" })),
        load(
            "rewrite",
            serde_json::json!({
                "rules": [{ "prefix": "/v1", "replace": "/" }],
                "response_headers": { "set": { "x-served-by": "sluice" } },
            }),
        ),
    ];
    let mut parts = request();
    let exchange = |parts: &mut http::request::Parts| {
        parts.headers.insert("x-api-key", HeaderValue::from_static("key-b"));
        let mut chain = Chain::new(&[0, 1, 2], &plugins, "api", None);
        let mut target = Target { path: Cow::Borrowed("/v1/users"), query: None };
        let verdict = chain.on_request(parts, &mut target, CLIENT);
        assert!(matches!(verdict, Ok(chain::Verdict::Continue)));
        let mut response = http::Response::new(sluice::body::ResponseBody::empty());
        assert!(chain.on_response(&mut response).is_ok());
        response
    };
    // The first exchange teaches the host which hooks each plugin leaves out.
    let response = exchange(&mut parts);
    assert_eq!(response.headers()["x-served-by"], "sluice");
    assert_eq!(response.headers()["ratelimit-limit"], "1000000000");
    bencher.bench_local(|| exchange(&mut parts));
}

/// The same logic as the bench plugin's on-request, native.
#[inline(never)]
fn native_on_request(headers: &mut HeaderMap) {
    let agent = headers.get("user-agent").map(|v| v.to_str().unwrap_or_default().to_owned());
    let accept = headers.get("accept").map(|v| v.to_str().unwrap_or_default().to_owned());
    divan::black_box((agent, accept));
    headers.insert("x-bench", HeaderValue::from_static("1"));
}

#[divan::bench]
fn on_request_native(bencher: divan::Bencher) {
    let mut parts = request();
    bencher.bench_local(|| native_on_request(divan::black_box(&mut parts.headers)));
}

fn backends() -> [Backend<'static>; 3] {
    [
        Backend { address: "10.0.0.1:8080", weight: 1, zone: "blue" },
        Backend { address: "10.0.0.2:8080", weight: 1, zone: "green" },
        Backend { address: "10.0.0.3:8080", weight: 2, zone: "red" },
    ]
}

#[divan::bench]
fn select_backend_wasm(bencher: divan::Bencher) {
    let plugin = plugin("select");
    let parts = request();
    let target = Target { path: Cow::Borrowed("/api/users"), query: None };
    let backends = backends();
    bencher.bench_local(|| {
        let request = chain::Selecting {
            method: &parts.method,
            headers: &parts.headers,
            target: &target,
            client_ip: CLIENT,
            tls: None,
            route: "api",
            context: &[],
        };
        let choice = chain::select_backend(&plugin, &request, &backends);
        assert_eq!(choice.ok(), Some(Some(1)));
    });
}

/// The same logic as the select plugin, native.
#[inline(never)]
fn native_select(headers: &HeaderMap, backends: &[Backend<'_>]) -> Option<usize> {
    let zone = headers.get("x-zone")?.to_str().ok()?.to_owned();
    backends.iter().position(|b| b.zone == zone)
}

#[divan::bench]
fn select_backend_native(bencher: divan::Bencher) {
    let parts = request();
    let backends = backends();
    bencher.bench_local(|| native_select(divan::black_box(&parts.headers), &backends));
}
