//! The answers the gateway makes itself: dead and slow backends, malformed requests.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn a_dead_backend_is_a_502_and_a_slow_one_a_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        http::Response::new(full("late"))
    })
    .await;
    let fine = Backend::named("fine").await;
    let config = format!(
        r#"{LISTENER}
[[upstream]]
name = "dead"
backends = ["{dead}"]

{}{}
[[route]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"

[[route]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"
timeout_ms = 300

[[route]]
name = "fine"
upstream = "fine"
"#,
        upstream("slow", &[&slow]),
        upstream("fine", &[&fine]),
    );
    let gateway = Gateway::start(&config);
    let addr = gateway.addr();

    let reply = get(addr, "x", "/dead").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.body, r#"{"error":"the backend could not be reached"}"#);
    assert!(!reply.body.contains("127.0.0.1"), "no internal address leaks");

    let started = Instant::now();
    let slow_request = tokio::spawn(async move { get(addr, "x", "/slow").await });
    let reply = get(addr, "x", "/").await;
    assert_eq!(reply.body, "fine", "other routes answer while one waits on a slow backend");
    let reply = slow_request.await.unwrap();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.body, r#"{"error":"the backend did not answer in time"}"#);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 504 comes at the route timeout, not when the backend answers"
    );
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_its_connection_closed() {
    let backend = Backend::named("ok").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"ok\"\n", upstream("ok", &[&backend]));
    let gateway = Gateway::start(&config);

    let mut socket = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
    socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(backend.seen().is_empty(), "a malformed request is never forwarded");

    let reply = get(gateway.addr(), "x", "/").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "the gateway keeps serving");
}

/// A body that sends one chunk and then never another.
struct Stalling(bool);

impl http_body::Body for Stalling {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"partial")))))
        }
    }
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_at_the_idle_timeout() {
    let backend = Backend::start(|_req| async {
        http::Response::new(http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
            Stalling(false),
            |never| match never {},
        )))
    })
    .await;
    let config = format!(
        "{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"stall\"\nidle_timeout_ms = 300\n",
        upstream("stall", &[&backend])
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    let response = client.raw(http::Request::get("/").header("host", "x").body(full("")).unwrap()).await;
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let read =
        tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::collect(response.into_body())).await;
    let read = read.expect("the gateway cuts the stalled body instead of waiting forever");
    assert!(read.is_err(), "a cut body is an error for the client, never a silently short success");
    assert!(started.elapsed() >= Duration::from_millis(250));
}
