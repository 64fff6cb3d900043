//! Wasm plugins through a real gateway: changes, short-circuits, context, balancing, sandbox limits.

use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

/// A route `r` on upstream `u` (the given backends) through `plugins`, after the plugin blocks.
fn config(plugins: &[String], chain: &[&str], backends: &[&Backend], route_extra: &str) -> String {
    let names: Vec<String> = chain.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "{LISTENER}\n{}\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [{}]\n{route_extra}\n",
        plugins.join("\n"),
        upstream("u", backends),
        names.join(", ")
    )
}

fn get_with(host_path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut request = Request::get(host_path).header("host", "plugins.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(full("")).unwrap()
}

#[tokio::test]
async fn plugins_change_requests_and_responses_and_share_the_request_context() {
    let backend = Backend::named("backend").await;
    let plugins = [testkit("a", "tag", ""), testkit("b", "tag", "")];
    let gateway = Gateway::start(&config(&plugins, &["a", "b"], &[&backend], ""));
    let mut client = Client::connect(gateway.addr()).await;
    for _ in 0..2 {
        let reply = client.send(get_with("/x", &[])).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "backend"));
        let seen = backend.last();
        assert_eq!(seen.headers["x-tag-a"], "a");
        assert_eq!(seen.headers["x-tag-b"], "b");
        assert_eq!(reply.headers["x-seen-a"], "200");
        assert_eq!(reply.headers["x-seen-b"], "200");
        // b read what a wrote, and both see the whole trail in on-response; the second request
        // starts with an empty context again.
        assert_eq!(reply.headers["x-trail-a"], "a,b");
        assert_eq!(reply.headers["x-trail-b"], "a,b");
    }
}

#[tokio::test]
async fn a_short_circuit_is_seen_by_every_plugin_that_ran_and_never_reaches_the_backend() {
    let backend = Backend::named("backend").await;
    let plugins = [testkit("a", "tag", ""), testkit("b", "tag", ""), testkit("c", "tag", "")];
    let gateway = Gateway::start(&config(&plugins, &["a", "b", "c"], &[&backend], ""));
    let reply = Client::connect(gateway.addr()).await.send(get_with("/x", &[("x-respond-b", "403")])).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "responded by b");
    assert_eq!(reply.headers["x-responded-by"], "b");
    assert_eq!(reply.headers["x-seen-b"], "403");
    assert_eq!(reply.headers["x-seen-a"], "403");
    assert!(!reply.headers.contains_key("x-seen-c"), "c's on-request never ran, so its on-response does not");
    assert!(backend.seen().is_empty());

    // An informational status is no answer: an invalid result, like any other.
    for status in ["101", "103"] {
        let reply = Client::connect(gateway.addr()).await.send(get_with("/x", &[("x-respond-b", status)])).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (500, r#"{"error":"a plugin failed on this request"}"#)
        );
        gateway.wait_for_log(&format!("{status} is informational: a plugin's status must be final (200 to 999)"));
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_plugin_rewrites_the_path_and_select_backend_chooses_by_header() {
    let (blue, green) = (Backend::named("blue").await, Backend::named("green").await);
    let plugins = [
        testkit("rewrite", "tag", "").replace("mode = \"tag\"", "mode = \"tag\"\nrewrite_path = \"/rewritten\""),
        testkit("zones", "select", ""),
    ];
    let config = format!(
        "{LISTENER}\n{}\n[[upstream]]\nname = \"zoned\"\nbalance = {{ plugin = \"zones\" }}\nbackends = [{{ address = \"{}\", zone = \"blue\" }}, {{ address = \"{}\", zone = \"green\" }}]\n\n[[route]]\nname = \"r\"\nupstream = \"zoned\"\nplugins = [\"rewrite\"]\n",
        plugins.join("\n"),
        blue.addr,
        green.addr
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    for _ in 0..3 {
        assert_eq!(client.send(get_with("/original?q=1", &[("x-zone", "green")])).await.body, "green");
        assert_eq!(client.send(get_with("/original", &[("x-zone", "blue")])).await.body, "blue");
    }
    assert_eq!(green.last().uri, "/rewritten?q=1");
    let mut others: Vec<String> = Vec::new();
    for _ in 0..4 {
        others.push(client.send(get_with("/", &[])).await.body);
    }
    others.sort();
    assert_eq!(others, ["blue", "blue", "green", "green"], "without a zone the upstream's round robin decides");
}

#[tokio::test]
async fn a_plugin_timeout_too_long_to_count_in_epoch_ticks_is_a_long_timeout() {
    let backend = Backend::named("backend").await;
    let plugins = [testkit("a", "tag", &format!("timeout_ms = {}", u64::MAX))];
    let gateway = Gateway::start(&config(&plugins, &["a"], &[&backend], ""));
    let reply = get(gateway.addr(), "x", "/x").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "backend"));
    assert_eq!(backend.last().headers["x-tag-a"], "a");
}

#[tokio::test]
async fn sandbox_limits_fail_only_the_request_that_broke_them() {
    let backend = Backend::named("ok").await;
    let fine = Backend::named("fine").await;
    let plugins = [
        testkit("loop", "loop", "timeout_ms = 50"),
        testkit("hog", "hog", "memory_mb = 8\nstate_mb = 1"),
        testkit("trap", "trap", ""),
        testkit("lenient", "trap", "on_error = \"allow\""),
    ];
    let config = format!(
        "{LISTENER}\n{}\n{}{}\n{}\n",
        plugins.join("\n"),
        upstream("u", &[&backend]),
        upstream("f", &[&fine]),
        [("loop", "/loop"), ("hog", "/hog"), ("trap", "/trap"), ("lenient", "/lenient")]
            .iter()
            .map(|(plugin, prefix)| format!(
                "[[route]]\nname = \"{plugin}\"\npath_prefix = \"{prefix}\"\nupstream = \"u\"\nplugins = [\"{plugin}\"]\n"
            ))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n[[route]]\nname = \"fine\"\nupstream = \"f\"\n"
    );
    let gateway = Gateway::start(&config);
    let addr = gateway.addr();

    // An endless loop: 500 at the deadline, while other requests keep being answered.
    let started = Instant::now();
    let looping =
        tokio::spawn(async move { Client::connect(addr).await.send(get_with("/loop", &[("x-loop", "1")])).await });
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(tokio::spawn(async move { get(addr, "x", "/other").await }));
    }
    for other in others {
        let reply = other.await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "fine"));
    }
    let reply = looping.await.unwrap();
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body, r#"{"error":"a plugin failed on this request"}"#);
    assert!(started.elapsed() < Duration::from_secs(2), "the loop was stopped at its deadline");
    gateway.wait_for_log("ran past its 50 ms deadline");

    let mut client = Client::connect(addr).await;
    for (path, trigger, log) in [
        ("/hog", "x-hog", "plugin=\"hog\""),
        ("/hog", "x-hog-state", "plugin `hog`: its shared state is full"),
        ("/trap", "x-trap", "plugin=\"trap\""),
        ("/trap", "x-invalid", "returned an invalid result: header `x-out` has an invalid value"),
        ("/trap", "x-flood", "returned an invalid result: more than 1000 header changes"),
        ("/trap", "x-flood-reply", "returned an invalid result: a response with more than 1000 headers"),
        ("/trap", "x-connect", "returned an invalid result: a plugin may not turn a request into CONNECT"),
    ] {
        let reply = client.send(get_with(path, &[(trigger, "1")])).await;
        assert_eq!(reply.status, 500, "{path}");
        gateway.wait_for_log(log);
        // The broken instance was thrown away: the plugin serves the next request.
        let reply = client.send(get_with(path, &[])).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "{path} after a failure");
    }
    let reply = client.send(get_with("/loop", &[])).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
    // The state hog kept what fits in its 1 MiB: 15 values of 64 KiB (with their keys and the
    // per-entry charge, a 16th would not fit): 15 × (65 536 + 176) bytes and the keys `hog-0` to
    // `hog-14` (80 bytes).
    gateway.wait_for_metric("sluice_plugin_state_values 15").await;
    gateway.wait_for_metric("sluice_plugin_state_bytes{plugin=\"hog\"} 985760").await;
    // Every failure counts as one: a trap, and a result the gateway refused.
    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    for (outcome, count) in [("ok", 5), ("error", 5), ("timeout", 0)] {
        let line =
            format!("sluice_plugin_calls_total{{plugin=\"trap\",hook=\"on-request\",outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }

    // on_error = "allow": the failing plugin is skipped.
    let reply = client.send(get_with("/lenient", &[("x-trap", "1")])).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
    assert!(
        backend.seen().iter().all(|s| !s.headers.contains_key("x-hog")),
        "a failed request never reaches the backend"
    );
}

/// A worker keeps an instance of every plugin it calls, so the pool is sized from the config at
/// start: one worker calling 1024 plugins (16 routes of 64) needs more than the pool's floor of
/// 1000. A reload that would not fit beside the running config is refused, and the running one
/// keeps serving.
#[tokio::test]
async fn the_instance_pool_is_sized_for_the_plugins_and_workers() {
    let backend = Backend::named("ok").await;
    let with_plugins = |count: usize| {
        let names: Vec<String> = (0..count).map(|i| format!("p{i}")).collect();
        let plugins: Vec<String> = names.iter().map(|name| testkit(name, "bench", "")).collect();
        let routes: Vec<String> = names
            .chunks(64)
            .enumerate()
            .map(|(route, chain)| {
                let chain: Vec<String> = chain.iter().map(|name| format!("\"{name}\"")).collect();
                format!(
                    "[[route]]\nname = \"r{route}\"\npath_prefix = \"/r{route}\"\nupstream = \"u\"\nplugins = [{}]\n",
                    chain.join(", ")
                )
            })
            .collect();
        format!("{LISTENER}\n{}\n{}\n{}", plugins.join("\n"), upstream("u", &[&backend]), routes.join("\n"))
    };
    let gateway = Gateway::start_with_workers(&with_plugins(1024), 1);
    let mut client = Client::connect(gateway.addr()).await;
    for route in 0..16 {
        let reply = client.get("x", &format!("/r{route}")).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "/r{route}");
    }

    // (1024 + 1025) plugins × 1 worker + 64 spare = 2113 > 2112, the pool sized for 1024.
    gateway.write_config(&with_plugins(1025));
    let reply = gateway.reload().await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let expected = "the plugins would need up to 2113 instances (one per plugin and worker, for the old and \
                    the new config while a reload overlaps them) but the gateway started with room for 2112";
    assert!(reply.body.contains(expected), "{}", reply.body);
    let reply = client.get("x", "/r15").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn shared_counters_span_instances_and_in_flight_requests_do_not_multiply_instances() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        http::Response::new(full("slow"))
    })
    .await;
    // A window that never rolls over, so the counts cannot restart mid-test.
    let forever = "window_ms = 9223372036854775807";
    let plugins = [
        testkit("count", "counter", "").replace("mode = \"counter\"", &format!("mode = \"counter\"\n{forever}")),
        testkit("fresh", "counter", "isolation = \"fresh\"")
            .replace("mode = \"counter\"", &format!("mode = \"counter\"\n{forever}")),
    ];
    let config = format!(
        "{LISTENER}\n{}\n{}\n[[route]]\nname = \"pooled\"\npath_prefix = \"/pooled\"\nupstream = \"u\"\nplugins = [\"count\"]\n\n[[route]]\nname = \"fresh\"\npath_prefix = \"/fresh\"\nupstream = \"u\"\nplugins = [\"fresh\"]\n",
        plugins.join("\n"),
        upstream("u", &[&slow])
    );
    let gateway = Gateway::start(&config);
    let addr = gateway.addr();
    let requests: Vec<_> = (0..500).map(|_| tokio::spawn(async move { get(addr, "x", "/pooled").await })).collect();
    let mut counts = Vec::new();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        counts.push(reply.headers["x-count"].to_str().unwrap().parse::<u64>().unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=500).collect::<Vec<_>>(), "one counter shared by every instance");
    let inits: u64 = get(addr, "x", "/pooled").await.headers["x-inits"].to_str().unwrap().parse().unwrap();
    assert!(inits <= 3, "500 requests in flight used {inits} instances: at most one per worker plus the load check");

    // A new instance per call still shares the counter.
    for expected in 1..=3u64 {
        let reply = get(addr, "x", "/fresh").await;
        assert_eq!(reply.headers["x-count"], expected.to_string().as_str());
    }
}

#[test]
fn plugins_that_cannot_serve_are_refused_at_load() {
    let dir = TempDir::new();
    let failing = format!(
        "{LISTENER}\n{}\n[[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n",
        testkit("bad", "init-fail", "")
    );
    let incompatible =
        format!("{LISTENER}\n[[plugin]]\nname = \"old\"\npath = \"{}\"\n", plugin_wasm("incompatible").display());
    let missing = format!("{LISTENER}\n[[plugin]]\nname = \"gone\"\npath = \"nowhere.wasm\"\n");
    for (config, expected) in [
        (failing, "plugin `bad`"),
        (incompatible, "built against contract sluice:plugin@9.0.0, but this gateway implements sluice:plugin@0.2.x"),
        (missing, "plugin `gone`"),
    ] {
        let path = dir.write("gateway.toml", &config);
        let output = std::process::Command::new(SLUICE).args(["check", "-c"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
    let path = dir.write("gateway.toml", &format!("{LISTENER}\n{}\n", testkit("bad", "init-fail", "")));
    let output = std::process::Command::new(SLUICE).args(["check", "-c"]).arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("init failed: testkit init refused: bad config"));
}

/// `sluice plugin new` gives a crate that passes its tests, builds to a component, and serves.
#[tokio::test]
async fn a_scaffolded_plugin_builds_passes_its_tests_and_serves() {
    let dir = TempDir::new();
    let crate_dir = dir.0.join("greeter");
    let created = std::process::Command::new(SLUICE)
        .args(["plugin", "new", "greeter", "--dir"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let again = std::process::Command::new(SLUICE)
        .args(["plugin", "new", "greeter", "--dir"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing crate is never overwritten");

    // Shares compiled dependencies with the workspace's other builds.
    let target = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [&["test", "--quiet"][..], &["build", "--quiet", "--release", "--target", "wasm32-wasip2"][..]] {
        let output = std::process::Command::new(&cargo)
            .args(args)
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo {args:?} in the scaffolded crate:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let backend = Backend::named("ok").await;
    let config = format!(
        "{LISTENER}\n[[plugin]]\nname = \"greeter\"\npath = \"{}\"\n[plugin.config]\ngreeting = \"hi\"\n\n{}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"greeter\"]\n",
        target.join("wasm32-wasip2/release/greeter.wasm").display(),
        upstream("u", &[&backend])
    );
    let gateway = Gateway::start(&config);
    let reply = get(gateway.addr(), "x", "/").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
    assert_eq!(reply.headers["x-greeted"], "hi");
    assert_eq!(backend.last().headers["x-greeting"], "hi");
}

/// Compiled plugins are cached on disk by content: a second load reuses the file, a changed plugin
/// gets a new one.
#[test]
fn compiled_plugins_are_cached_on_disk_by_content() {
    let dir = TempDir::new();
    let cache = dir.0.join("cache");
    let check = |config: &str| {
        let path = dir.write("gateway.toml", config);
        let output = std::process::Command::new(SLUICE)
            .args(["check", "-c"])
            .arg(&path)
            .env("SLUICE_CACHE_DIR", &cache)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    // By name and inode: a file compiled again would be written anew and renamed into place.
    let cached = || {
        use std::os::unix::fs::MetadataExt;
        let mut files: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), e.metadata().unwrap().ino())
            })
            .collect();
        files.sort();
        files
    };
    let config = format!("{LISTENER}\n{}", testkit("t", "tag", ""));
    check(&config);
    let first = cached();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0.ends_with(".cwasm"));
    check(&config);
    assert_eq!(cached(), first, "the second load reused the compiled file");

    let other = format!("{LISTENER}\n[[plugin]]\nname = \"i\"\npath = \"{}\"\n", plugin_wasm("incompatible").display());
    let path = dir.write("other.toml", &other);
    std::process::Command::new(SLUICE)
        .args(["check", "-c"])
        .arg(&path)
        .env("SLUICE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_eq!(cached().len(), 2, "another component is compiled and cached under its own hash");
}

/// The disk cache keeps the 32 most recently used compiled plugins and drops older ones, and
/// writes that died, when it grows; files it did not name itself are left alone.
#[test]
fn the_plugin_cache_keeps_the_most_recently_used_files_and_only_touches_its_own() {
    let dir = TempDir::new();
    let cache = dir.0.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let now = std::time::SystemTime::now();
    let age = |path: &std::path::Path, ago: Duration| {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(now - ago).unwrap();
    };
    // 40 plugins compiled by other versions, the newest a day ago, then a minute older each.
    let old = |i: u64| cache.join(format!("{i:064x}-{:016x}.cwasm", 7));
    for i in 0..40 {
        std::fs::write(old(i), "old").unwrap();
        age(&old(i), Duration::from_secs(86_400 + 60 * i));
    }
    let (dead_write, live_write) = (cache.join(format!("{:064x}.1.tmp", 1)), cache.join(format!("{:064x}.2.tmp", 2)));
    for (path, ago) in [(&dead_write, 7200), (&live_write, 1)] {
        std::fs::write(path, "partial").unwrap();
        age(path, Duration::from_secs(ago));
    }
    let foreign = [cache.join("notes.txt"), cache.join("other.cwasm")];
    for path in &foreign {
        std::fs::write(path, "not the cache's").unwrap();
        age(path, Duration::from_secs(86_400 * 30));
    }

    let check = |plugins: &str| {
        let config = dir.write("gateway.toml", &format!("{LISTENER}\n{plugins}"));
        std::process::Command::new(SLUICE).args(["check", "-c"]).arg(&config).env("SLUICE_CACHE_DIR", &cache).output()
    };
    let compiled = || -> Vec<String> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.len() > 64 && name.ends_with(".cwasm"))
            .collect()
    };
    let testkit = testkit("t", "tag", "");
    let output = check(&testkit).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let before = compiled();
    assert_eq!(before.len(), 32);
    assert!((0..31).all(|i| old(i).exists()), "the 31 most recent old files stay beside the new one");
    assert!((31..40).all(|i| !old(i).exists()), "the oldest go");
    assert!(!dead_write.exists() && live_write.exists(), "a write that died an hour ago goes, not one in progress");
    assert!(foreign.iter().all(|path| path.exists()), "files the cache did not name stay");

    // A file that is loaded counts as recently used, however old it is: with testkit's file made
    // the oldest of all, loading testkit then compiling another plugin drops an old file instead.
    let testkit_file = cache.join(before.iter().find(|name| !name.starts_with("000000")).unwrap());
    age(&testkit_file, Duration::from_secs(86_400 * 60));
    let other = format!("[[plugin]]\nname = \"i\"\npath = \"{}\"\n", plugin_wasm("incompatible").display());
    check(&format!("{testkit}\n{other}")).unwrap();
    assert_eq!(compiled().len(), 32);
    assert!(testkit_file.exists() && !old(30).exists(), "the oldest unused file went, not the one just loaded");
}
