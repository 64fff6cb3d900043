//! Reloads: what changes, what fails safely, and zero dropped requests under load.

use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

const NO_WATCH: &str = "[server]\nwatch = false\n";

fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

#[tokio::test]
async fn a_failed_reload_changes_nothing_and_says_why() {
    let backend = Backend::named("served").await;
    let good = format!("{NO_WATCH}{LISTENER}\n{}\n{}", upstream("u", &[&backend]), route("r", "/", "u"));
    let gateway = Gateway::start(&good);
    let broken_cases = [
        (format!("{good}\n[[route]\nname = \"x\""), "sluice.toml:", "unclosed array table"),
        (format!("{good}\n[[plugin]]\nname = \"gone\"\npath = \"missing.wasm\"\n"), "plugin `gone`", "cannot read"),
        (format!("{good}\n{}", route("bad", "/bad", "nowhere")), "upstream `nowhere` is not defined", "sluice.toml:"),
    ];
    for (i, (broken, first, second)) in broken_cases.iter().enumerate() {
        gateway.write_config(broken);
        let reply = gateway.reload().await;
        assert_eq!(reply.status, 422, "{}", reply.body);
        let error: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(first) && message.contains(second), "{message}");
        let status = gateway.admin_json("/status").await;
        assert_eq!(status["generation"], 1);
        assert_eq!(status["last_reload_error"], message);
        let reply = get(gateway.addr(), "x", "/").await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "served"));
        let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
        assert!(metrics.contains(&format!("sluice_reloads_total{{result=\"error\"}} {}", i + 1)), "{metrics}");
    }
    gateway.write_config(&good);
    let reply = gateway.reload().await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, r#"{"generation":2}"#));
    let status = gateway.admin_json("/status").await;
    assert_eq!(status["last_reload_error"], serde_json::Value::Null);
    assert_eq!(status["routes"][0]["name"], "r");
    assert_eq!(status["upstreams"][0]["backends"][0]["address"], backend.addr.to_string());
    assert_eq!(status["upstreams"][0]["backends"][0]["healthy"], true);
}

#[tokio::test]
async fn a_reload_drops_the_health_series_of_removed_backends_and_stops_checking_them() {
    let (kept, removed) = (Backend::named("kept").await, Backend::named("removed").await);
    let config = |backends: &[&Backend]| {
        let health = "health = { path = \"/healthz\", interval_ms = 100, timeout_ms = 100 }\n";
        format!("{NO_WATCH}{LISTENER}\n{}{health}\n{}", upstream("u", backends), route("r", "/", "u"))
    };
    let series =
        |backend: &Backend| format!("sluice_upstream_backend_healthy{{upstream=\"u\",backend=\"{}\"}} 1", backend.addr);
    let gateway = Gateway::start(&config(&[&kept, &removed]));
    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    assert!(metrics.contains(&series(&kept)) && metrics.contains(&series(&removed)), "{metrics}");

    gateway.write_config(&config(&[&kept]));
    assert_eq!(gateway.reload().await.status, 200);
    let probes = removed.seen().len();
    // Five check intervals, with no request that would make a worker let go of the old snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    assert!(metrics.contains(&series(&kept)), "{metrics}");
    assert!(!metrics.contains(&removed.addr.to_string()), "{metrics}");
    assert!(removed.seen().len() <= probes + 1, "the old snapshot kept checking the removed backend");
    let kept_probes = kept.seen().len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while kept.seen().len() == kept_probes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kept.seen().len() > kept_probes, "the new snapshot checks the kept backend");
}

#[tokio::test]
async fn reload_swaps_routes_and_listeners_and_keep_alive_connections_see_the_new_config() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let upstreams = format!("{}{}", upstream("a", &[&a]), upstream("b", &[&b]));
    let first = format!("{NO_WATCH}{LISTENER}\n{upstreams}\n{}", route("a", "/a", "a"));
    let gateway = Gateway::start(&first);
    let mut client = Client::connect(gateway.addr()).await;
    assert_eq!(client.get("x", "/a").await.body, "a");

    let second_listener = "[[listener]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n";
    let second = format!("{NO_WATCH}{LISTENER}\n{second_listener}\n{upstreams}\n{}", route("b", "/b", "b"));
    gateway.write_config(&second);
    assert_eq!(gateway.reload().await.body, r#"{"generation":2}"#);
    // The same keep-alive connection now follows the new routes.
    assert_eq!(client.get("x", "/a").await.status, 404);
    assert_eq!(client.get("x", "/b").await.body, "b");
    let added = gateway.listener_from_log("second");
    assert_eq!(get(added, "x", "/b").await.body, "b");

    // Remove the second listener and move the first one to another port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let moved = format!(
        "{NO_WATCH}[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n\n{upstreams}\n{}",
        route("b", "/b", "b")
    );
    gateway.write_config(&moved);
    assert_eq!(gateway.reload().await.body, r#"{"generation":3}"#);
    assert_eq!(get(format!("127.0.0.1:{port}").parse().unwrap(), "x", "/b").await.body, "b");
    for gone in [added, gateway.addr()] {
        assert!(refuses_connections(gone).await, "{gone} is closed after the reload");
    }
    assert_eq!(client.get("x", "/b").await.body, "b", "a connection accepted before the move stays open");
}

#[tokio::test]
async fn sighup_and_file_changes_reload_and_shared_counters_survive() {
    let backend = Backend::named("ok").await;
    let counter = testkit("count", "counter", "")
        .replace("mode = \"counter\"", "mode = \"counter\"\nwindow_ms = 9223372036854775807");
    let config = |extra: &str| {
        format!(
            "{LISTENER}\n{counter}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"count\"]\n{extra}",
            upstream("u", &[&backend])
        )
    };
    let gateway = Gateway::start(&config(""));
    let mut client = Client::connect(gateway.addr()).await;
    for expected in ["1", "2"] {
        assert_eq!(client.get("x", "/").await.headers["x-count"], expected);
    }
    // A change to the file reloads by itself.
    gateway.write_config(&config(&route("extra", "/extra", "u")));
    wait_for_generation(&gateway, 2).await;
    assert_eq!(client.get("x", "/").await.headers["x-count"], "3", "a reload keeps shared counters");
    // So does SIGHUP.
    gateway.signal("HUP");
    wait_for_generation(&gateway, 3).await;
    assert_eq!(client.get("x", "/").await.headers["x-count"], "4");
    assert_eq!(client.get("x", "/extra").await.body, "ok", "the route the file change added serves");
}

async fn wait_for_generation(gateway: &Gateway, generation: u64) {
    for _ in 0..100 {
        if gateway.admin_json("/status").await["generation"] == generation {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not reach generation {generation}:\n{}", gateway.log().join("\n"));
}

/// p50 and p99 of latencies, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_micros();
    (at(0.50), at(0.99))
}

/// Keep-alive clients requesting `/` until `until`; every answer must be a 200 from exactly one
/// build. Returns the latencies and how many answers each build gave.
async fn load(addr: std::net::SocketAddr, clients: usize, until: Instant) -> (Vec<Duration>, usize, usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let (mut latencies, mut a, mut b) = (Vec::new(), 0, 0);
                while Instant::now() < until {
                    let started = Instant::now();
                    let reply = client.send(Request::get("/").header("host", "x").body(full("")).unwrap()).await;
                    latencies.push(started.elapsed());
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    let builds: Vec<_> = reply.headers.get_all("x-build").iter().collect();
                    assert_eq!(builds.len(), 1, "exactly one build answered: {builds:?}");
                    match builds[0].to_str().unwrap() {
                        "sluice-testkit-build-A" => a += 1,
                        "sluice-testkit-build-B" => b += 1,
                        other => panic!("unknown build {other}"),
                    }
                }
                (latencies, a, b)
            })
        })
        .collect();
    let (mut latencies, mut a, mut b) = (Vec::new(), 0, 0);
    for task in tasks {
        let (l, x, y) = task.await.expect("a client failed: a request was dropped or refused");
        latencies.extend(l);
        a += x;
        b += y;
    }
    (latencies, a, b)
}

/// The proof of hot reload: 20 s of keep-alive load while the plugin file is replaced 50 times,
/// alternating two builds, and a route comes and goes. Run `scripts/reload-soak` for the figures
/// in release mode.
#[tokio::test]
async fn fifty_plugin_swaps_under_load_drop_nothing() {
    let backend = Backend::named("ok").await;
    let testkit = std::fs::read(plugin_wasm("testkit")).unwrap();
    let marker = b"sluice-testkit-build-A";
    let at = testkit.windows(marker.len()).position(|w| w == marker).expect("the build marker is in the component");
    let mut build_b = testkit.clone();
    build_b[at..at + marker.len()].copy_from_slice(b"sluice-testkit-build-B");
    let builds = [testkit, build_b];

    let config = |extra: &str| {
        format!(
            "{LISTENER}\n[log]\naccess = false\n\n[[plugin]]\nname = \"build\"\npath = \"build.wasm\"\n[plugin.config]\nmode = \"build\"\n\n{}\n{}plugins = [\"build\"]\n{extra}",
            upstream("u", &[&backend]),
            route("r", "/", "u")
        )
    };
    let dir = TempDir::new();
    std::fs::write(dir.0.join("build.wasm"), &builds[0]).unwrap();
    let gateway = Gateway::start_in(dir, &config(""));
    let addr = gateway.addr();

    let swaps = 50;
    let duration = Duration::from_secs(20);
    let until = Instant::now() + duration;
    let loading = tokio::spawn(load(addr, 8, until));
    for swap in 1..=swaps {
        tokio::time::sleep(duration / (swaps + 1)).await;
        let temporary = gateway.dir.0.join("build.wasm.new");
        std::fs::write(&temporary, &builds[swap as usize % 2]).unwrap();
        std::fs::rename(&temporary, gateway.dir.0.join("build.wasm")).unwrap();
        if swap % 5 == 0 {
            let extra = if swap % 10 == 0 { String::new() } else { route("extra", "/extra", "u") };
            gateway.write_config(&config(&extra));
        }
    }
    let (during, a, b) = loading.await.unwrap();
    let generation = gateway.admin_json("/status").await["generation"].as_u64().unwrap();
    assert!(a > 0 && b > 0, "both builds answered: A {a}, B {b}");
    assert!(generation > 10, "the swaps were picked up as reloads (generation {generation})");
    let errors = get(gateway.admin(), "admin", "/metrics").await.body;
    assert!(!errors.contains("sluice_reloads_total{result=\"error\"}"), "no reload failed:\n{errors}");

    let (quiet, _, _) = load(addr, 8, Instant::now() + Duration::from_secs(5)).await;
    let ((p50, p99), (quiet_p50, quiet_p99)) = (percentiles(during.clone()), percentiles(quiet.clone()));
    eprintln!(
        "reload soak: {} requests during {swaps} swaps ({generation} generations; build A {a}, build B {b}), 0 failed\n\
         latency during reloads: p50 {p50} us, p99 {p99} us\n\
         latency without reloads: p50 {quiet_p50} us, p99 {quiet_p99} us ({} requests)",
        during.len(),
        quiet.len()
    );
}
