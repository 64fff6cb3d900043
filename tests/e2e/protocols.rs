//! HTTP/1.0 and HTTP/2 clients, request trailers to HTTP/1.1 backends, gRPC-style HTTP/2 upstreams with
//! trailers, and WebSocket upgrades.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn h2_client(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn an_http2_client_reaches_an_http1_backend() {
    let backend = Backend::named("h1").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"h1\"\n", upstream("h1", &[&backend]));
    let gateway = Gateway::start(&config);
    let mut client = h2_client(gateway.addr()).await;
    for path in ["/one", "/two"] {
        let response =
            client.send_request(Request::get(format!("http://h2.test{path}")).body(full("")).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "h1");
        let seen = backend.last();
        assert_eq!((seen.version, seen.uri.as_str()), (Version::HTTP_11, path));
        assert_eq!(seen.headers["host"], "h2.test");
    }
}

#[tokio::test]
async fn a_chunked_request_reaches_an_http1_backend_with_its_trailers() {
    // The backend answers with the body it read and the trailers that came after it.
    let backend = Backend::start(|request: Request<hyper::body::Incoming>| async move {
        let collected = request.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut fields: Vec<String> = trailers.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect();
        fields.sort();
        http::Response::new(full(format!("{}|{}", String::from_utf8_lossy(&collected.to_bytes()), fields.join(","))))
    })
    .await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"b\"\n", upstream("b", &[&backend]));
    let gateway = Gateway::start(&config);
    let request = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\n\r\n";
    let (reply, _) = raw_exchange(gateway.addr(), request).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    // The framing field is left out of the trailers; the checksum arrives.
    assert!(reply.ends_with("\r\n\r\nhello|x-checksum=abc"), "{reply}");
}

#[tokio::test]
async fn an_http1_0_client_keeps_its_connection_when_it_asks_to() {
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"b\"\n", upstream("b", &[&backend]));
    let gateway = Gateway::start(&config);
    // Two requests on one connection: the first asks for keep-alive, the second does not.
    let requests = b"GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: h\r\n\r\n";
    let (reply, closed) = raw_exchange(gateway.addr(), requests).await;
    let answers: Vec<&str> = reply.split("HTTP/1.0 200 OK\r\n").skip(1).collect();
    assert!(closed && answers.len() == 2, "{reply}");
    assert!(answers[0].contains("connection: keep-alive\r\n") && answers[0].ends_with("\r\n\r\nb"), "{reply}");
    assert!(!answers[1].contains("keep-alive") && answers[1].ends_with("\r\n\r\nb"), "{reply}");
    assert_eq!(backend.seen().iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(), ["/a", "/b"]);
}

#[tokio::test]
async fn grpc_style_http2_passes_through_with_trailers() {
    let backend = Backend::start(|req| async move {
        let request = req.into_body().collect().await.unwrap().to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let body = http_body_util::Full::new(Bytes::from([&b"echo:"[..], &request].concat()))
            .with_trailers(async move { Some(Ok(trailers)) })
            .map_err(|never| match never {})
            .boxed();
        http::Response::builder().header("content-type", "application/grpc").body(body).unwrap()
    })
    .await;
    let config = format!(
        "{LISTENER}\n[[upstream]]\nname = \"grpc\"\nprotocol = \"http2\"\nbackends = [\"{}\"]\n\n[[route]]\nname = \"r\"\nupstream = \"grpc\"\n",
        backend.addr
    );
    let gateway = Gateway::start(&config);
    let mut client = h2_client(gateway.addr()).await;
    let request = Request::post("http://grpc.test/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("\0\0\0\0\x05hello"))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), &b"echo:\0\0\0\0\x05hello"[..]);

    let seen = backend.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri, "http://grpc.test/pkg.Service/Method");
    assert_eq!(seen.headers["te"], "trailers");
}

#[tokio::test]
async fn a_websocket_upgrade_passes_through_and_echoes() {
    let backend = Backend::start(|mut req| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        http::Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(full(""))
            .unwrap()
    })
    .await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"ws\"\nupstream = \"ws\"\n", upstream("ws", &[&backend]));
    let gateway = Gateway::start(&config);

    let mut socket = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
    socket
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");

    // A masked text frame "Hello", as a browser sends it.
    let frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    for _ in 0..3 {
        socket.write_all(&frame).await.unwrap();
        let mut echoed = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, frame);
    }
    let seen = backend.last();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
}
