//! The example plugins `api-key-auth`, `rewrite` and `rate-limit` through a real gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use http::Request;

use crate::support::*;

/// A rate-limit window of 100 years: windows are aligned to the epoch, so this one began in 1970
/// and ends in 2069, and no test can cross into the next window (where counts start again).
const CENTURY_MS: u64 = 3_153_600_000_000;

/// A `[[plugin]]` named `name` loading the example plugin component `wasm`, with `config` as the
/// body of its `[plugin.config]` table.
fn plugin(name: &str, wasm: &str, config: &str) -> String {
    format!("[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n[plugin.config]\n{config}\n", plugin_wasm(wasm).display())
}

/// A gateway with `plugins` and one route to `backend` through `chain`.
fn gateway(plugins: &[String], chain: &[&str], backend: &Backend) -> Gateway {
    let names: Vec<String> = chain.iter().map(|n| format!("\"{n}\"")).collect();
    Gateway::start(&format!(
        "{LISTENER}\n{}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [{}]\n",
        plugins.join("\n"),
        upstream("u", &[backend]),
        names.join(", ")
    ))
}

/// `GET path_and_query` with these headers.
fn get_with(path_and_query: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut request = Request::get(path_and_query).header("host", "example.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(full("")).unwrap()
}

/// Every value of the header `name`, in order.
fn values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
}

/// The header `name` as a number.
fn number(reply: &Reply, name: &str) -> u64 {
    reply.headers[name].to_str().unwrap().parse().unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Whole seconds, rounded up, until the century window ends.
fn seconds_left_in_century() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    (CENTURY_MS - now).div_ceil(1000)
}

fn api_key_auth() -> String {
    plugin("auth", "api_key_auth", "query = \"api_key\"\nkeys = { alice = \"alice-secret\", bob = \"bob+secret/=\" }")
}

#[tokio::test]
async fn api_key_auth_refuses_a_missing_or_wrong_key() {
    let backend = Backend::named("backend").await;
    let gateway = gateway(&[api_key_auth()], &["auth"], &backend);
    let mut client = Client::connect(gateway.addr()).await;
    for request in [
        get_with("/items", &[]),
        get_with("/items", &[("x-api-key", "alice-secreT")]),
        get_with("/items", &[("x-api-key", "")]),
        get_with("/items?api_key=nope", &[]),
        get_with("/items?api_key=alice-secret", &[("x-api-key", "wrong")]),
    ] {
        let uri = request.uri().clone();
        let reply = client.send(request).await;
        assert_eq!(reply.status, 401, "{uri}");
        assert_eq!(reply.headers["www-authenticate"], r#"ApiKey realm="sluice""#);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.body, r#"{"error":"missing or invalid API key"}"#);
    }
    assert!(backend.seen().is_empty(), "a refused request never reaches the backend");
}

#[tokio::test]
async fn api_key_auth_accepts_a_key_from_the_header_or_the_query_and_never_forwards_it() {
    let backend = Backend::named("backend").await;
    let gateway = gateway(&[api_key_auth()], &["auth"], &backend);
    let mut client = Client::connect(gateway.addr()).await;

    let reply = client.send(get_with("/items?a=1", &[("x-api-key", "alice-secret"), ("x-consumer", "mallory")])).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "backend"));
    let seen = backend.last();
    assert_eq!(seen.uri, "/items?a=1");
    assert_eq!(values(&seen.headers, "x-consumer"), ["alice"], "the client's own claim is replaced");
    assert!(!seen.headers.contains_key("x-api-key"));

    let reply = client.send(get_with("/items?a=1&api_key=bob%2Bsecret%2F%3D&b=x%20y&c", &[])).await;
    assert_eq!(reply.status, 200);
    let seen = backend.last();
    assert_eq!(seen.uri, "/items?a=1&b=x%20y&c", "the key is gone, the other parameters are as sent");
    assert_eq!(values(&seen.headers, "x-consumer"), ["bob"]);

    // The header wins; a key in the query is removed all the same.
    let reply = client.send(get_with("/items?api_key=bob%2Bsecret%2F%3D", &[("x-api-key", "alice-secret")])).await;
    assert_eq!(reply.status, 200);
    let seen = backend.last();
    assert_eq!((seen.uri.as_str(), values(&seen.headers, "x-consumer")), ("/items", vec!["alice"]));
}

#[tokio::test]
async fn rewrite_rewrites_paths_edits_headers_both_ways_and_redirects() {
    let backend = Backend::start(|_req| async {
        http::Response::builder()
            .header("x-internal", "secret")
            .header("x-served-by", "backend")
            .header("x-trace", "backend")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let config = r#"rules = [
    { prefix = "/old", replace = "/new" },
    { regex = "^/users/(\\d+)$", replace = "/v2/users/$1" },
]
redirects = [{ prefix = "/docs", to = "https://docs.example.com", status = 308 }]
request_headers = { remove = ["x-debug"], set = { x-env = "prod" }, add = { x-trace = "gateway" } }
response_headers = { remove = ["x-internal"], set = { x-served-by = "sluice" }, add = { x-trace = "gateway" } }"#;
    let gateway = gateway(&[plugin("rewrite", "rewrite", config)], &["rewrite"], &backend);
    let mut client = Client::connect(gateway.addr()).await;

    for (sent, forwarded) in [
        ("/old/a/b?q=1", "/new/a/b?q=1"),
        ("/old", "/new"),
        ("/oldx", "/oldx"),
        ("/users/42", "/v2/users/42"),
        ("/users/42/posts", "/users/42/posts"),
        ("/users/abc", "/users/abc"),
    ] {
        let reply = client.send(get_with(sent, &[])).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "{sent}");
        assert_eq!(backend.last().uri, forwarded, "{sent}");
    }

    let reply = client
        .send(get_with("/x", &[("x-debug", "1"), ("x-env", "dev"), ("x-env", "test"), ("x-trace", "client")]))
        .await;
    let seen = backend.last();
    assert!(!seen.headers.contains_key("x-debug"));
    assert_eq!(values(&seen.headers, "x-env"), ["prod"]);
    assert_eq!(values(&seen.headers, "x-trace"), ["client", "gateway"]);
    assert!(!reply.headers.contains_key("x-internal"));
    assert_eq!(values(&reply.headers, "x-served-by"), ["sluice"]);
    assert_eq!(values(&reply.headers, "x-trace"), ["backend", "gateway"]);

    let forwarded = backend.seen().len();
    let reply = client.send(get_with("/docs/guide/intro?v=2", &[])).await;
    assert_eq!(reply.status, 308);
    assert_eq!(reply.headers["location"], "https://docs.example.com/guide/intro?v=2");
    assert_eq!(reply.body, "");
    assert_eq!(values(&reply.headers, "x-served-by"), ["sluice"], "response_headers apply to redirects too");
    assert_eq!(backend.seen().len(), forwarded, "a redirect never reaches the backend");
}

#[tokio::test]
async fn rate_limit_allows_the_limit_then_answers_429_with_retry_after() {
    let backend = Backend::named("backend").await;
    let limiter = plugin("limit", "rate_limit", &format!("limit = 3\nwindow_ms = {CENTURY_MS}"));
    let gateway = gateway(&[limiter], &["limit"], &backend);
    let mut client = Client::connect(gateway.addr()).await;

    for remaining in [2, 1, 0] {
        let expected_reset = seconds_left_in_century();
        let reply = client.send(get_with("/", &[])).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "backend"));
        assert_eq!(number(&reply, "ratelimit-limit"), 3);
        assert_eq!(number(&reply, "ratelimit-remaining"), remaining);
        assert!(number(&reply, "ratelimit-reset").abs_diff(expected_reset) <= 5, "the window ends in 2069");
        assert!(!reply.headers.contains_key("retry-after"));
    }
    for _ in 0..3 {
        let expected_retry = seconds_left_in_century();
        let reply = client.send(get_with("/", &[])).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.body, r#"{"error":"rate limit exceeded"}"#);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(number(&reply, "ratelimit-limit"), 3);
        assert_eq!(number(&reply, "ratelimit-remaining"), 0);
        // The full window must end before a sliding window lets another request in.
        let retry_after = number(&reply, "retry-after");
        assert!(retry_after.abs_diff(expected_retry) <= 5, "Retry-After {retry_after}, expected ~{expected_retry}");
        assert_eq!(number(&reply, "ratelimit-reset"), retry_after);
    }
    assert_eq!(backend.seen().len(), 3);
}

#[tokio::test]
async fn rate_limit_by_consumer_counts_each_consumer_apart() {
    let backend = Backend::named("backend").await;
    let limiter =
        plugin("limit", "rate_limit", &format!("limit = 2\nwindow_ms = {CENTURY_MS}\nkey = \"context:consumer\""));
    // The same limit by the header api-key-auth adds: a plugin sees the request as every
    // plugin before it left it, whether the one just before changed it (auth) or not (limit).
    let by_header =
        plugin("by-header", "rate_limit", &format!("limit = 2\nwindow_ms = {CENTURY_MS}\nkey = \"header:x-consumer\""));
    let gateway = gateway(&[api_key_auth(), limiter, by_header], &["auth", "limit", "by-header"], &backend);
    let mut client = Client::connect(gateway.addr()).await;
    let as_consumer = |key: &'static str| get_with("/", &[("x-api-key", key)]);

    for (key, status, remaining) in [
        ("alice-secret", 200, 1),
        ("alice-secret", 200, 0),
        ("alice-secret", 429, 0),
        ("bob+secret/=", 200, 1),
        ("alice-secret", 429, 0),
        ("bob+secret/=", 200, 0),
        ("bob+secret/=", 429, 0),
    ] {
        let reply = client.send(as_consumer(key)).await;
        assert_eq!(reply.status, status, "{key}");
        assert_eq!(number(&reply, "ratelimit-remaining"), remaining, "{key}");
    }
    let reply = client.send(as_consumer("mallory")).await;
    assert_eq!(reply.status, 401, "auth runs first");
    assert!(!reply.headers.contains_key("ratelimit-limit"), "the limiter never ran");
    let consumers: Vec<String> =
        backend.seen().iter().map(|s| s.headers["x-consumer"].to_str().unwrap().into()).collect();
    assert_eq!(consumers, ["alice", "alice", "bob", "bob"]);
}

#[tokio::test]
async fn rate_limit_is_shared_by_every_worker() {
    let backend = Backend::named("backend").await;
    let limiter = plugin("limit", "rate_limit", &format!("limit = 10\nwindow_ms = {CENTURY_MS}"));
    let gateway = gateway(&[limiter], &["limit"], &backend);
    let addr = gateway.addr();

    // One connection each, all at once: the gateway's two workers both serve some of them.
    let requests: Vec<_> = (0..30).map(|_| tokio::spawn(async move { get(addr, "example.test", "/").await })).collect();
    let mut remaining = Vec::new();
    let mut refused = 0;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status.as_u16() {
            200 => remaining.push(number(&reply, "ratelimit-remaining")),
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    remaining.sort();
    assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "one counter: each allowed request saw its own count");
    assert_eq!(refused, 20);
    assert_eq!(backend.seen().len(), 10);
}

#[tokio::test]
async fn rate_limit_counters_are_forgotten_once_their_windows_have_ended() {
    let backend = Backend::named("backend").await;
    let limiter = plugin("limit", "rate_limit", "limit = 1\nwindow_ms = 2000\nkey = \"header:x-client\"");
    let gateway = gateway(&[limiter], &["limit"], &backend);
    let mut client = Client::connect(gateway.addr()).await;
    let client_0 = || get_with("/", &[("x-client", "client-0")]);
    for i in 0..20 {
        let reply = client.send(get_with("/", &[("x-client", &format!("client-{i}"))])).await;
        assert_eq!(reply.status.as_u16(), 200);
    }
    assert_eq!(client.send(client_0()).await.status.as_u16(), 429);

    // A counter is read for two windows (the current one, then as the previous one); the gateway
    // sweeps once a second and reports what it keeps.
    gateway.wait_for_metric("sluice_plugin_state_counters 20").await;
    gateway.wait_for_metric("sluice_plugin_state_counters 0").await;
    assert_eq!(client.send(client_0()).await.status.as_u16(), 200, "a forgotten counter starts from zero");
    assert_eq!(client.send(client_0()).await.status.as_u16(), 429, "and limits again");
}
