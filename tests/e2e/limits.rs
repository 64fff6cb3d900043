//! Limits against large, slow and numerous clients: 431 for oversized request heads, 413 for
//! bodies over a route's limit, slowloris connections cut at the header read timeout while other
//! clients are served, and `max_connections`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    raw_exchange(addr, request).await.0
}

#[tokio::test]
async fn oversized_heads_get_431_and_bodies_over_the_route_limit_413() {
    let backend = Backend::named("b").await;
    let config = format!(
        "{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nmax_body_bytes = 1000\n",
        upstream("u", &[&backend])
    );
    let gateway = Gateway::start(&config);

    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(120_000));
    let reply = raw(gateway.addr(), big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large"), "{reply:.200}");
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let reply = raw(gateway.addr(), format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");

    let post = |length: usize| {
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{}",
            "x".repeat(length)
        )
    };
    let reply = raw(gateway.addr(), post(2000).as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413 Payload Too Large"), "{reply}");
    assert!(reply.ends_with("{\"error\":\"the request body is larger than this route accepts\"}"), "{reply}");
    assert!(backend.seen().is_empty(), "nothing reached the backend");
    let reply = raw(gateway.addr(), post(1000).as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("\r\n\r\nb"), "{reply}");
}

#[tokio::test]
async fn slowloris_clients_are_cut_at_the_header_timeout_while_others_are_served() {
    let backend = Backend::named("b").await;
    let config = format!(
        "[server]\nheader_read_timeout_ms = 1000\n\n{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream("u", &[&backend])
    );
    let gateway = Gateway::start(&config);

    // 300 clients that start a request and never finish its head.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }
    for _ in 0..5 {
        let reply = get(gateway.addr(), "a", "/").await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "b"));
    }
    // Each slow client is disconnected once the header read timeout passes.
    for stream in &mut slow {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a slowloris connection is still open");
    }
    // So is a connection that never sends a byte, before it could tell HTTP/1 from HTTP/2.
    let mut silent = TcpStream::connect(gateway.addr()).await.unwrap();
    let mut nothing = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing)).await;
    assert!(matches!(read, Ok(Ok(0))), "the silent connection is closed without an answer: {read:?}");
    // An idle keep-alive connection is closed after the same timeout.
    let mut idle = TcpStream::connect(gateway.addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once() {
    let backend = Backend::named("b").await;
    let listener = LISTENER.replace("protocol = \"http\"\n", "protocol = \"http\"\nmax_connections = 2\n");
    let config = format!("{listener}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start(&config);

    let mut first = Client::connect(gateway.addr()).await;
    let mut second = Client::connect(gateway.addr()).await;
    assert_eq!(first.get("a", "/").await.status.as_u16(), 200);
    assert_eq!(second.get("a", "/").await.status.as_u16(), 200);
    let reply = raw(gateway.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(reply, "", "a third connection is closed without an answer");
    assert_eq!(first.get("a", "/").await.status.as_u16(), 200, "the first two are unaffected");

    drop(first);
    let mut answered = false;
    for _ in 0..100 {
        if raw(gateway.addr(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "a connection is accepted again once one closed");
}

/// The CPU time the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_the_listeners_wait_instead_of_spinning_and_recover() {
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start_with_open_files(&config, 48);

    // Connections to the admin API and the listener until no descriptor is left: the rest wait in
    // the backlog, and every accept fails (EMFILE) until some close.
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(tokio::net::TcpStream::connect(gateway.admin()).await.unwrap());
        held.push(tokio::net::TcpStream::connect(gateway.addr()).await.unwrap());
    }
    let log = gateway.wait_for_log("accept failed");
    assert!(log.contains("Too many open files"), "{log}");
    let before = cpu_ticks(gateway.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(gateway.child.id()) - before;
    assert!(used < 50, "{used} clock ticks of CPU in 2 s with accepts failing: a busy loop");

    drop(held);
    let mut answered = false;
    for _ in 0..100 {
        let admin = get(gateway.admin(), "admin", "/healthz").await;
        if admin.status == 200 && get(gateway.addr(), "a", "/").await.status == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "both listeners accept again once connections close");
    assert!(gateway.log().iter().any(|line| line.contains("accepting connections again")));
}

#[tokio::test]
async fn http2_clients_get_at_most_the_configured_concurrent_streams() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now2, peak2) = (now.clone(), peak.clone());
    let backend = Backend::start(move |_req| {
        let (now, peak) = (now2.clone(), peak2.clone());
        async move {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("b"))
        }
    })
    .await;
    let config = format!(
        "[server]\nhttp2_max_concurrent_streams = 4\n\n{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream("u", &[&backend])
    );
    let gateway = Gateway::start(&config);
    let stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // Streams opened before the server's SETTINGS arrive past the limit are refused
    // (REFUSED_STREAM); once the client has them, it holds itself to the limit.
    let mut first = sender.clone();
    let warm_up = first.send_request(http::Request::get("http://a/").body(full("")).unwrap()).await.unwrap();
    assert_eq!(warm_up.status(), 200);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                sender.ready().await.unwrap();
                let request = http::Request::get("http://a/").body(full("")).unwrap();
                sender.send_request(request).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4, "the client is held to the server's stream limit");
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

#[tokio::test]
async fn an_http2_client_that_resets_streams_as_fast_as_it_opens_them_is_cut_off() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let backend = Backend::named("b").await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&backend]));
    let gateway = Gateway::start(&config);

    // The 2023 rapid-reset attack: each stream's HEADERS (GET / with END_STREAM, from the HPACK
    // static table) followed at once by RST_STREAM (CANCEL), 1000 streams in one write.
    let mut attack = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    attack.extend(h2_frame(SETTINGS, 0, 0, &[]));
    let get = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    for stream in (1..2000).step_by(2) {
        attack.extend(h2_frame(HEADERS, 0x5, stream, &get));
        attack.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let _ = stream.write_all(&attack).await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "the gateway closes the connection");

    let mut frames = reply.as_slice();
    let mut goaway = None;
    while frames.len() >= 9 {
        let length = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        let Some(payload) = frames.get(9..9 + length) else { break };
        if frames[3] == GOAWAY {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        frames = &frames[9 + length..];
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY with ENHANCE_YOUR_CALM");
    assert!(backend.seen().len() < 100, "most streams never reached the backend: {}", backend.seen().len());

    let reply = raw(gateway.addr(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "others are still served: {reply}");
}
