//! What the backend sees: forwarding headers, hop-by-hop removal, connection reuse, balancing.

use crate::support::*;

#[tokio::test]
async fn forwards_with_the_forwarding_rules_and_reuses_connections() {
    let backend = Backend::start(|_req| async {
        http::Response::builder()
            .header("keep-alive", "timeout=5")
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("x-backend", "one")
            .body(full("hello"))
            .unwrap()
    })
    .await;
    let config =
        format!("{LISTENER}\n{}\n[[route]]\nname = \"all\"\nupstream = \"one\"\n", upstream("one", &[&backend]));
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    let request = http::Request::get("/x")
        .header("host", "shop.test:8080")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("x-forwarded-for", "192.0.2.1")
        .header("x-custom", "kept")
        .body(full(""))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello");
    assert_eq!(reply.headers["x-backend"], "one");
    for hop in ["keep-alive", "x-internal"] {
        assert!(!reply.headers.contains_key(hop), "response header {hop} must be dropped");
    }

    let seen = backend.last();
    assert_eq!(seen.uri, "/x");
    assert_eq!(seen.headers["host"], "shop.test:8080", "Host passes as sent");
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.test:8080");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert!(!seen.headers.contains_key("x-hop") && !seen.headers.contains_key("connection"));
    let id = seen.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let reply = client
        .send(
            http::Request::get("/y")
                .header("host", "shop.test")
                .header("x-request-id", "abc-123")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(backend.last().headers["x-request-id"], "abc-123", "a client's request id is kept");
    // One header map serves a connection's requests and responses in turn: the response holds
    // the backend's headers and nothing of the request before it.
    let mut names: Vec<&str> = reply.headers.keys().map(|name| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "date", "x-backend"]);
    assert_eq!(reply.headers.get_all("x-backend").iter().count(), 1);
    for _ in 0..5 {
        client.get("shop.test", "/z").await;
    }
    assert_eq!(backend.connections(), 1, "one pooled upstream connection serves sequential requests");

    let access = gateway.wait_for_log("path=\"/y\"");
    for field in ["method=GET", "route=\"all\"", "status=200", "duration_us="] {
        assert!(access.contains(field), "access line {access:?} lacks {field}");
    }
    assert!(access.contains(&format!("backend=\"{}\"", backend.addr)), "{access}");
}

#[tokio::test]
async fn trusted_proxies_name_the_client_and_hashing_keeps_it_on_one_backend() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let config = format!(
        r#"[[listener]]
name = "public"
listen = "127.0.0.1:0"
protocol = "http"
trusted_proxies = ["127.0.0.0/8"]

[[upstream]]
name = "pair"
backends = ["{}", "{}"]
balance = "consistent_hash"

[[upstream]]
name = "rr"
backends = ["{}", "{}"]

[[route]]
name = "sticky"
path_prefix = "/sticky"
upstream = "pair"

[[route]]
name = "rr"
upstream = "rr"
"#,
        a.addr, b.addr, a.addr, b.addr
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    let mut by_client = std::collections::HashMap::new();
    for i in 0..40 {
        let ip = format!("203.0.113.{}", i % 8);
        let request =
            http::Request::get("/sticky").header("host", "h").header("x-forwarded-for", &ip).body(full("")).unwrap();
        let backend = client.send(request).await.body;
        assert_eq!(by_client.entry(ip).or_insert_with(|| backend.clone()), &backend, "a client stays on its backend");
    }
    let mut sides: Vec<_> = by_client.values().collect();
    sides.sort();
    sides.dedup();
    assert_eq!(sides.len(), 2, "eight clients spread over both backends");
    let access = gateway.wait_for_log("client=203.0.113.7");
    assert!(access.contains("route=\"sticky\""), "the access log names the client behind the trusted proxy: {access}");

    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(client.get("h", "/").await.body);
    }
    assert!(order == ["a", "b", "a", "b"] || order == ["b", "a", "b", "a"], "round robin alternates: {order:?}");
}

#[tokio::test]
async fn backends_named_by_dns_name_are_resolved() {
    let backend = Backend::named("named").await;
    let config = format!(
        "{LISTENER}\n[[upstream]]\nname = \"n\"\nbackends = [\"localhost:{}\"]\n\n[[route]]\nname = \"r\"\nupstream = \"n\"\n",
        backend.addr.port()
    );
    let gateway = Gateway::start(&config);
    let reply = get(gateway.addr(), "x", "/").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "named"));
}

#[tokio::test]
async fn json_logs_carry_the_access_fields() {
    let backend = Backend::named("j").await;
    let config = format!(
        "{LISTENER}\n[log]\nformat = \"json\"\n\n{}\n[[route]]\nname = \"r\"\nupstream = \"j\"\n",
        upstream("j", &[&backend])
    );
    let gateway = Gateway::start(&config);
    get(gateway.addr(), "x", "/json-path").await;
    let line = gateway.wait_for_log("/json-path");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["target"], "sluice::access");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/json-path");
    assert_eq!(entry["route"], "r");
    assert_eq!(entry["backend"], backend.addr.to_string());
    assert_eq!(entry["status"], 200);
    assert!(entry["duration_us"].as_u64().is_some(), "{entry}");
}
