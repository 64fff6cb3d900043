//! Resilience: active health checks, retries on another backend, passive outlier detection and
//! the per-upstream limit of requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// A backend on its own thread and runtime, answering `name` to everything, that can be killed:
/// its runtime is shut down, which closes every connection it had.
struct Killable {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    fn start(name: &'static str) -> Killable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(|_req: http::Request<Incoming>| async move {
                                Ok::<_, std::convert::Infallible>(Response::new(full(name)))
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here closes every connection the backend had.
        });
        Killable { addr, stop: Some(stop), thread: Some(thread) }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `healthy` flag /status shows for `backend`.
async fn status_healthy(gateway: &Gateway, backend: SocketAddr) -> bool {
    let status = gateway.admin_json("/status").await;
    let backends = status["upstreams"][0]["backends"].as_array().unwrap().clone();
    let entry = backends.iter().find(|b| b["address"] == backend.to_string()).expect("the backend in /status");
    entry["healthy"].as_bool().unwrap()
}

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_request_and_is_marked_unhealthy() {
    let mut doomed = Killable::start("doomed");
    let steady = Killable::start("steady");
    let config = format!(
        "{LISTENER}\n[[upstream]]\nname = \"u\"\nbackends = [\"{}\", \"{}\"]\n\
         health = {{ path = \"/healthz\", interval_ms = 500, timeout_ms = 200, unhealthy_threshold = 1 }}\n\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\n",
        doomed.addr, steady.addr
    );
    let gateway = Gateway::start(&config);
    assert!(status_healthy(&gateway, doomed.addr).await);

    // Four keep-alive clients, 150 GETs each; the doomed backend dies a quarter of the way in,
    // with requests in flight on its pooled connections.
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, done) = (gateway.addr(), done.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut answers = Vec::new();
                for _ in 0..150 {
                    let reply = client.get("any", "/").await;
                    answers.push((reply.status.as_u16(), reply.body));
                    done.fetch_add(1, Ordering::SeqCst);
                }
                answers
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 150 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    doomed.kill();
    let killed_at = tokio::time::Instant::now();
    let mut answered_by = std::collections::HashMap::new();
    for client in clients {
        for (status, body) in client.await.unwrap() {
            assert_eq!(status, 200, "{body}");
            *answered_by.entry(body).or_insert(0) += 1;
        }
    }
    assert_eq!(answered_by.values().sum::<usize>(), 600);
    assert!(answered_by["doomed"] > 0 && answered_by["steady"] > 0, "{answered_by:?}");

    // Two intervals after the kill, the checks have it down.
    tokio::time::sleep_until(killed_at + Duration::from_millis(1000)).await;
    assert!(!status_healthy(&gateway, doomed.addr).await, "the killed backend is unhealthy in /status");
    assert!(status_healthy(&gateway, steady.addr).await);
    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    let gauge = format!("sluice_upstream_backend_healthy{{upstream=\"u\",backend=\"{}\"}} 0", doomed.addr);
    assert!(metrics.contains(&gauge), "{metrics}");
}

#[tokio::test]
async fn failing_backends_are_ejected_and_full_upstreams_refuse_at_once() {
    let broken = Backend::start(|_req| async { Response::builder().status(500).body(full("broken")).unwrap() }).await;
    let fine = Backend::named("fine").await;
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("slow"))
    })
    .await;
    let config = format!(
        "{LISTENER}\n{}\n{}max_requests = 1\n\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\n\n[[route]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"slow\"\n",
        upstream("u", &[&broken, &fine]),
        upstream("slow", &[&slow]),
    );
    let gateway = Gateway::start(&config);

    // Round robin sends every other request to the broken backend: its fifth 500 in a row ejects it.
    let mut client = Client::connect(gateway.addr()).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(client.get("any", "/").await.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 5, "{statuses:?}");
    assert!(!status_healthy(&gateway, broken.addr).await);
    for _ in 0..10 {
        let reply = client.get("any", "/").await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "fine"));
    }
    let line = gateway.wait_for_log("backend ejected after 5 failed requests in a row");
    assert!(line.contains("ejection_s=10"), "{line}");

    // max_requests = 1: a second request while one is in flight is refused, not queued.
    let first = tokio::spawn(get(gateway.addr(), "any", "/slow"));
    while slow.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = get(gateway.addr(), "any", "/slow").await;
    assert_eq!(second.status.as_u16(), 503);
    assert_eq!(second.body, "{\"error\":\"the upstream is at its limit of requests in flight\"}");
    assert_eq!(first.await.unwrap().body, "slow");
}
