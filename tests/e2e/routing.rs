//! Which route a request takes: hosts, prefixes, methods, normalisation, and 404.

use crate::support::*;

#[tokio::test]
async fn routes_by_host_prefix_and_method() {
    let (exact, wildcard, fallback, post, admin) = (
        Backend::named("exact").await,
        Backend::named("wildcard").await,
        Backend::named("fallback").await,
        Backend::named("post").await,
        Backend::named("admin").await,
    );
    let config = format!(
        r#"{LISTENER}
{}{}{}{}{}
[[route]]
name = "exact"
host = "api.example.com"
path_prefix = "/api"
upstream = "exact"

[[route]]
name = "wildcard"
host = "*.example.com"
path_prefix = "/api/v2"
upstream = "wildcard"

[[route]]
name = "fallback"
upstream = "fallback"

[[route]]
name = "post"
path_prefix = "/submit"
methods = ["POST"]
upstream = "post"

[[route]]
name = "admin"
path_prefix = "/admin"
upstream = "admin"
"#,
        upstream("exact", &[&exact]),
        upstream("wildcard", &[&wildcard]),
        upstream("fallback", &[&fallback]),
        upstream("post", &[&post]),
        upstream("admin", &[&admin]),
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    let cases = [
        ("API.Example.com:8080", "/api/users", "exact"),
        // Exact host beats wildcard even though the wildcard route has the longer prefix.
        ("api.example.com", "/api/v2/users", "exact"),
        ("a.b.example.com", "/api/v2/x", "wildcard"),
        ("example.com", "/api/v2/x", "fallback"),
        ("api.example.com", "/apix", "fallback"),
        ("other.test", "/submit", "fallback"),
        ("other.test", "/public/../admin/panel", "admin"),
        ("other.test", "/public/%2e%2e/admin", "admin"),
    ];
    for (host, path, expected) in cases {
        let reply = client.get(host, path).await;
        assert_eq!(reply.body, expected, "Host {host}, path {path}");
    }
    assert_eq!(admin.seen()[0].uri, "/admin/panel", "the backend gets the normalised path");
    let reply = client.send(http::Request::post("/submit").header("host", "x").body(full("data")).unwrap()).await;
    assert_eq!(reply.body, "post");
}

#[tokio::test]
async fn strip_prefix_keeps_the_query_and_no_route_is_a_json_404() {
    let backend = Backend::named("api").await;
    let config = format!(
        r#"{LISTENER}
{}
[[route]]
name = "api"
host = "api.test"
path_prefix = "/api/"
strip_prefix = true
upstream = "api"
"#,
        upstream("api", &[&backend])
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    client.get("api.test", "/api/users/7?full=1").await;
    assert_eq!(backend.last().uri, "/users/7?full=1");
    client.get("api.test", "/api").await;
    assert_eq!(backend.last().uri, "/");

    let reply = client.get("elsewhere.test", "/api/users").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.body, r#"{"error":"no route matches this request"}"#);
    assert_eq!(backend.seen().len(), 2);
}
