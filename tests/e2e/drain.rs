//! SIGTERM: stop accepting, finish what is in flight, exit 0.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_a_request_in_flight_then_exits_zero() {
    let (arrived, arrived_rx) = tokio::sync::oneshot::channel::<()>();
    let arrived = std::sync::Mutex::new(Some(arrived));
    let backend = Backend::start(move |_req| {
        if let Some(tx) = arrived.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            http::Response::new(full("finished"))
        }
    })
    .await;
    let config =
        format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"slow\"\n", upstream("slow", &[&backend]));
    let mut gateway = Gateway::start(&config);
    let addr = gateway.addr();
    let in_flight = tokio::spawn(async move { get(addr, "x", "/").await });
    arrived_rx.await.unwrap();

    gateway.signal("TERM");
    gateway.wait_for_log("shutting down");
    assert!(refuses_connections(addr).await, "no new connections once draining");

    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "finished"));
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let backend = Backend::named("b").await;
    // A drain deadline far past the test's patience: only closing idle connections ends it in time.
    let config = format!(
        "[server]\ndrain_timeout_ms = 60000\n\n{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"b\"\n",
        upstream("b", &[&backend])
    );
    let mut gateway = Gateway::start(&config);
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect(gateway.addr()).await;
        assert_eq!(client.get("x", "/").await.status.as_u16(), 200);
        idle.push(client);
    }

    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    drop(idle);
}
