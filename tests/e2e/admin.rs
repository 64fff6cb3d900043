//! The admin API: token, health while draining, status and metrics.

use std::time::Duration;

use http::Request;

use crate::support::*;

#[tokio::test]
async fn the_admin_api_needs_its_token_and_reports_metrics() {
    let backend = Backend::named("ok").await;
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\n{LISTENER}\n{}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"tag\"]\n",
        testkit("tag", "tag", ""),
        upstream("u", &[&backend])
    );
    let gateway = Gateway::start(&config);
    for _ in 0..2 {
        assert_eq!(get(gateway.addr(), "x", "/").await.status, 200);
    }
    assert_eq!(get(gateway.addr(), "x", "/nothing/../").await.status, 200);

    let refused = get(gateway.admin(), "admin", "/metrics").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = Client::connect(gateway.admin())
        .await
        .send(Request::get("/status").header("authorization", "Bearer nope").body(full("")).unwrap())
        .await;
    assert_eq!(wrong.status, 401);

    let mut admin = Client::connect(gateway.admin()).await;
    let authorized = |path: &str| {
        Request::get(path.to_string())
            .header("host", "admin")
            .header("authorization", "Bearer s3cret")
            .body(full(""))
            .unwrap()
    };
    let health = admin.send(authorized("/healthz")).await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (200, "ok"));
    let metrics = admin.send(authorized("/metrics")).await.body;
    for line in [
        "sluice_requests_total{route=\"r\",status=\"200\"} 3".to_string(),
        "sluice_request_duration_seconds_count 3".to_string(),
        "sluice_plugin_calls_total{plugin=\"tag\",hook=\"on-request\",outcome=\"ok\"} 3".to_string(),
        "sluice_plugin_calls_total{plugin=\"tag\",hook=\"on-response\",outcome=\"ok\"} 3".to_string(),
        "sluice_reloads_total{result=\"ok\"} 1".to_string(),
        format!("sluice_upstream_backend_healthy{{upstream=\"u\",backend=\"{}\"}} 1", backend.addr),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    let status: serde_json::Value = serde_json::from_str(&admin.send(authorized("/status")).await.body).unwrap();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["plugins"][0]["name"], "tag");
    assert_eq!(status["plugins"][0]["sha256"].as_str().unwrap().len(), 64);
    let reload = admin
        .send(
            Request::post("/reload")
                .header("host", "admin")
                .header("authorization", "Bearer s3cret")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!((reload.status.as_u16(), reload.body.as_str()), (200, r#"{"generation":2}"#));
}

#[tokio::test]
async fn healthz_says_503_while_draining() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        http::Response::new(full("late"))
    })
    .await;
    let config = format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n", upstream("u", &[&slow]));
    let mut gateway = Gateway::start(&config);
    assert_eq!(get(gateway.admin(), "admin", "/healthz").await.body, "ok");
    let addr = gateway.addr();
    let in_flight = tokio::spawn(async move { get(addr, "x", "/").await });
    while slow.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.signal("TERM");
    gateway.wait_for_log("shutting down");
    let health = get(gateway.admin(), "admin", "/healthz").await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (503, "draining"));
    assert_eq!(in_flight.await.unwrap().body, "late");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
}
