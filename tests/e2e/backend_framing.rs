//! How the gateway reads HTTP/1.1 backends that answer in every framing RFC 9112 allows (and a few
//! it does not): a scripted backend on a raw socket, so each response is exactly these bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The response the scripted backend writes for a request path, and whether it closes after it.
fn script(path: &str) -> (&'static str, bool) {
    match path {
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/close" => ("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", true),
        "/continue" => ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        "/no-content" => ("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false),
        "/head" => ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false),
        "/both" => {
            ("HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false)
        }
        "/conflict" => ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", false),
        "/garbage" => ("NOT HTTP AT ALL\r\n\r\n", false),
        "/bye" => ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye", true),
        "/truncated" => ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true),
        _ => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain", false),
    }
}

/// The next request head from `stream`, taken off the front of `buffer` (which keeps what was
/// read past it); `None` once the stream ends or fails.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A backend that answers each request head by [`script`]; counts the connections it accepted.
async fn scripted_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while let Some(head) = read_head(&mut stream, &mut buffer).await {
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (response, close) = script(&path);
                    if stream.write_all(response.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A gateway whose one route goes to `backend`.
fn gateway_to(backend: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "{LISTENER}\n[[upstream]]\nname = \"u\"\nbackends = [\"{backend}\"]\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n"
    ))
}

#[tokio::test]
async fn every_response_framing_is_read_to_its_end_and_the_connection_reused_when_it_may_be() {
    let (backend, connections) = scripted_backend().await;
    let gateway = gateway_to(backend);
    let mut client = Client::connect(gateway.addr()).await;

    // Chunked, with a chunk extension and a trailer section: the data, whole.
    let reply = client.get("a", "/chunked").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hello, world"));
    // An interim 100 is skipped; the final response follows.
    let reply = client.get("a", "/continue").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    // No body after a 204, nor in an answer to HEAD (whose Content-Length stays).
    let reply = client.get("a", "/no-content").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::NO_CONTENT, ""));
    let reply = client.send(Request::head("/head").header("host", "a").body(full("")).unwrap()).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(reply.headers["content-length"], "10");
    // All four on one backend connection, each read exactly to its end.
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // Chunked wins over a Content-Length beside it; that connection is not trusted again.
    let reply = client.get("a", "/both").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    let reply = client.get("a", "/plain").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "plain"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // A body delimited by the backend closing: read to the close; the next request connects anew.
    let reply = client.get("a", "/close").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "until the end"));
    let reply = client.get("a", "/plain").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "plain"));
    assert_eq!(connections.load(Ordering::SeqCst), 3);

    // Heads the gateway cannot trust: 502, and the connection is dropped (the first on the third
    // connection, the second on a fourth); the next request connects anew.
    for path in ["/conflict", "/garbage"] {
        let reply = client.get("a", path).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.body);
    }
    let reply = client.get("a", "/plain").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "plain"));
    assert_eq!(connections.load(Ordering::SeqCst), 5);

    // A backend that closes a kept-alive connection while it idles (its own keep-alive timeout):
    // the next request goes out on a new connection, unharmed.
    let reply = client.get("a", "/bye").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "bye"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = client.get("a", "/plain").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "plain"));
    assert_eq!(connections.load(Ordering::SeqCst), 6);

    // A body cut short by the backend: the client's connection is closed, the response never
    // completed.
    let (reply, closed) = raw_exchange(gateway.addr(), b"GET /truncated HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(closed, "{reply}");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 100, "{reply}");
}

/// The gateway's end of the loopback connection from `gateway_side` to `backend`, as the kernel
/// lists it in /proc/net/tcp: its state (hex, `08` is CLOSE_WAIT), or `None` once it is gone.
fn socket_state(gateway_side: SocketAddr, backend: SocketAddr) -> Option<String> {
    let hex = |addr: SocketAddr| match addr.ip() {
        std::net::IpAddr::V4(ip) => format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port()),
        std::net::IpAddr::V6(_) => unreachable!("the test binds 127.0.0.1"),
    };
    let (local, remote) = (hex(gateway_side), hex(backend));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp is readable");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields[3].to_string())
    })
}

/// A backend that hangs up on a kept-alive connection while it idles: the gateway closes its end
/// within a pool sweep, rather than leaving it half-closed until the next request to that
/// backend (which, after a reload that removed the backend, never comes).
#[tokio::test]
async fn an_idle_connection_the_backend_hung_up_is_closed_without_waiting_for_a_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (peer_tx, peer_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let head = read_head(&mut stream, &mut Vec::new()).await;
        assert!(head.is_some(), "the gateway closed before sending its request");
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        // Let the gateway take the response and pool the connection, then hang up on it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
        peer_tx.send(peer).unwrap();
    });
    let gateway = gateway_to(backend);
    let mut client = Client::connect(gateway.addr()).await;
    let reply = client.get("a", "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));

    let gateway_side = peer_rx.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut state = socket_state(gateway_side, backend);
    while state.as_deref() == Some("08") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = socket_state(gateway_side, backend);
    }
    assert_ne!(state.as_deref(), Some("08"), "the gateway's end is still in CLOSE_WAIT after 5 s");
}
