//! Malformed and ambiguous requests on raw sockets: the framing attacks behind request smuggling
//! get 400 and a closed connection, and never reach the backend, while well-framed pipelines
//! whose bodies hold line feeds and blank lines are served whole. Requests whose host is
//! ambiguous or missing get 400 too.

use std::net::SocketAddr;

use crate::support::*;

/// Writes `request` and reads until the gateway closes the connection; panics if it stays open.
async fn until_closed(addr: SocketAddr, request: &[u8]) -> String {
    let (reply, closed) = raw_exchange(addr, request).await;
    assert!(closed, "the gateway closes the connection: {reply}");
    reply
}

#[tokio::test]
async fn framing_attacks_get_400_and_a_closed_connection_and_never_reach_the_backend() {
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start(&config);
    // Each case ends with a second, smuggled request: it must never be answered or forwarded.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: &[(&str, &str)] = &[
        (
            "duplicate Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        ),
        (
            "invalid chunk size",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        ),
        ("Transfer-Encoding not chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd"),
        ("chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("whitespace before the colon", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd"),
        ("bare CR", "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n"),
        ("bare LF ending the request line", "GET / HTTP/1.1\nHost: a\r\n\r\n"),
        ("bare LF ending a header", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n"),
        ("bare LF ending the head", "GET / HTTP/1.1\r\nHost: a\r\n\n"),
        (
            "Content-Length, then Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding, then Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        ),
    ];
    for (name, request) in cases {
        let reply = until_closed(gateway.addr(), format!("{request}{smuggled}").as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{name}: {reply}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{name}: one answer, then the connection closes: {reply}");
    }
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());
}

/// A plugin may not set the headers that frame a message: a `Content-Length: 0` set on this
/// request would have the backend read the body as a second request (and answer it to whoever
/// next uses that pooled connection). Setting one is an invalid result: 500, nothing forwarded,
/// the reason logged. On responses too.
#[tokio::test]
async fn plugins_cannot_set_the_headers_that_frame_a_message() {
    let backend = Backend::named("b").await;
    let rewrite = |name: &str, table: &str, header: &str| {
        let wasm = plugin_wasm("rewrite");
        format!(
            "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n[plugin.config.{table}]\nset = {{ \"{header}\" = \"0\" }}\n",
            wasm.display()
        )
    };
    let route = |name: &str| {
        format!("[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"u\"\nplugins = [\"{name}\"]\n")
    };
    let config = format!(
        "{LISTENER}\n{}\n{}\n{}\n{}\n{}",
        rewrite("length", "request_headers", "content-length"),
        rewrite("chunked", "response_headers", "transfer-encoding"),
        upstream("u", &[&backend]),
        route("length"),
        route("chunked"),
    );
    let gateway = Gateway::start(&config);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let request = format!(
        "POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let (reply, _) = raw_exchange(gateway.addr(), request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
    gateway.wait_for_log("header `content-length` frames the message: only the gateway sets it");
    let (reply, _) =
        raw_exchange(gateway.addr(), b"GET /chunked HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
    gateway.wait_for_log("header `transfer-encoding` frames the message: only the gateway sets it");
    // rewrite asks for its response headers in on-request, so both were refused before the backend.
    assert!(backend.seen().is_empty(), "{:?}", backend.seen().into_iter().map(|s| s.uri).collect::<Vec<_>>());
}

#[tokio::test]
async fn well_framed_pipelines_with_line_feeds_in_their_bodies_are_served_whole() {
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start(&config);
    let pipeline = concat!(
        "POST /sized HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nab\n\ncd\n\n",
        "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5;x=y\r\n\n\r\n\n\n\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let (reply, closed) = raw_exchange(gateway.addr(), pipeline.as_bytes()).await;
    assert!(closed, "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{reply}");
    let seen: Vec<_> = backend.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/sized", "/chunked", "/last"]);
}

#[tokio::test]
async fn two_hosts_or_none_in_http_1_1_get_400_and_http_1_0_without_one_reaches_the_backend_with_its_address() {
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start(&config);
    let cases = [
        (
            "GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            r#"{"error":"the request has more than one Host header"}"#,
        ),
        (
            "GET /none HTTP/1.1\r\nConnection: close\r\n\r\n",
            r#"{"error":"an HTTP/1.1 request must have a Host header"}"#,
        ),
    ];
    for (request, error) in cases {
        let (reply, _) = raw_exchange(gateway.addr(), request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n") && reply.ends_with(error), "{request}: {reply}");
    }
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());

    let (reply, closed) = raw_exchange(gateway.addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(closed && reply.starts_with("HTTP/1.0 200 OK\r\n") && reply.ends_with("\r\n\r\nb"), "{reply}");
    let seen = backend.last();
    assert_eq!((seen.version, seen.uri.as_str()), (http::Version::HTTP_11, "/old"));
    assert_eq!(seen.headers.get_all("host").iter().collect::<Vec<_>>(), [&backend.addr.to_string()]);
}
