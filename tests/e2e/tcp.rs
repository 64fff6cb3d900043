//! `tcp` listeners: bytes relayed to an upstream's backends, with half-close, balancing, a dead
//! backend skipped, the idle timeout and connection metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP backend: says `<name>:` then, once the client has finished sending (half-close), echoes
/// everything it got back in upper case and closes.
async fn shouting_echo(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(format!("{name}:").as_bytes()).await.unwrap();
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await.unwrap();
                stream.write_all(&got.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    (addr, task)
}

fn tcp_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"db\"\n{extra}\n\n\
         [[upstream]]\nname = \"db\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// Sends `message`, half-closes, and reads everything until the relay closes.
async fn exchange(addr: SocketAddr, message: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(message.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await.unwrap().unwrap();
    String::from_utf8(reply).unwrap()
}

#[tokio::test]
async fn tcp_listeners_relay_both_ways_with_half_close_and_balance_across_backends() {
    let (a, _a) = shouting_echo("a").await;
    let (b, _b) = shouting_echo("b").await;
    // A backend that is gone: its port refuses connections, and the relay moves on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let flaky = tcp_config(&[a, dead, b], "").replace("\"db\"", "\"flaky\"");
    let gateway = Gateway::start(&format!("{}\n{flaky}", tcp_config(&[a, b], "")));
    let addr = gateway.listeners["db"];

    // The backend only answers once it has seen the client's half-close through the relay.
    let mut replies = Vec::new();
    for i in 0..6 {
        replies.push(exchange(addr, &format!("hello {i}")).await);
    }
    let from = |name: &str| replies.iter().filter(|r| r.starts_with(name)).count();
    assert_eq!((from("a:"), from("b:")), (3, 3), "round robin over the live backends: {replies:?}");
    for (i, reply) in replies.iter().enumerate() {
        assert!(reply.ends_with(&format!(":HELLO {i}")), "{reply}");
    }

    // Every connection through the listener whose upstream has a dead backend still succeeds.
    for i in 0..4 {
        let reply = exchange(gateway.listeners["flaky"], &format!("again {i}")).await;
        assert!(reply.ends_with(&format!(":AGAIN {i}")), "{reply}");
    }
    let line = gateway.wait_for_log("backend skipped");
    assert!(line.contains(&format!("backend {dead}: connect failed")), "{line}");

    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    assert!(metrics.contains("sluice_tcp_connections_total{listener=\"db\"} 6"), "{metrics}");
    assert!(metrics.contains("sluice_tcp_connections_total{listener=\"flaky\"} 4"), "{metrics}");
    assert!(metrics.contains("sluice_tcp_connections_active{listener=\"db\"} 0"), "{metrics}");
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_and_a_big_one_streams_whole() {
    let (a, _a) = shouting_echo("a").await;
    let gateway = Gateway::start(&tcp_config(&[a], "idle_timeout_ms = 300"));
    let addr = gateway.listeners["db"];

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "closed after the idle timeout");
    assert_eq!(got, b"a:", "the greeting, then the close");

    // 4 MiB each way: more than any buffer, so both directions stream concurrently.
    let big = "x".repeat(4 << 20);
    let reply = exchange(addr, &big).await;
    assert_eq!(reply.len(), 2 + big.len());
    assert!(reply[2..].bytes().all(|c| c == b'X'));
}

#[tokio::test]
async fn tcp_listener_settings_are_checked() {
    let dir = TempDir::new();
    let check = |config: &str| {
        let path = dir.write("tcp.toml", config);
        let output = std::process::Command::new(SLUICE).args(["check", "-c"]).arg(&path).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = tcp_config(&[backend], "");
    assert!(check(&config).0, "{}", check(&config).1);
    let (ok, text) = check(&config.replace("upstream = \"db\"\n\n", "\n\n"));
    assert!(!ok && text.contains(":4:12: a tcp listener needs `upstream = \"NAME\"`"), "{text}");
    let (ok, text) = check(&config.replace("upstream = \"db\"\n\n", "upstream = \"nope\"\n\n"));
    assert!(!ok && text.contains("upstream `nope` is not defined (defined: db)"), "{text}");
    let (ok, text) = check(&format!("{config}\n[[route]]\nname = \"r\"\nlistener = \"db\"\nupstream = \"db\"\n"));
    assert!(
        !ok && text.contains("listener `db` is not an http or https listener: routes apply to those only"),
        "{text}"
    );
    let (ok, text) = check(&tcp_config(&[backend], "trusted_proxies = []\nplugins = []"));
    assert!(!ok && text.contains("`plugins` does not apply to a tcp listener"), "{text}");
}
