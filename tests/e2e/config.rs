//! `sluice check` and `sluice --version`: config errors name the file, line and key.

use std::process::Command;

use crate::support::*;

/// Runs `sluice check` on `config` with `env` set; returns (success, stdout + stderr).
fn check(config: &str, env: &[(&str, &str)]) -> (bool, String, std::path::PathBuf, TempDir) {
    let dir = TempDir::new();
    let path = dir.write("gateway.toml", config);
    let output = Command::new(SLUICE).args(["check", "-c"]).arg(&path).envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text, path, dir)
}

const VALID: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:0"
protocol = "http"

[[upstream]]
name = "api"
backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2, zone = "eu" }]
balance = "least_conn"

[[route]]
name = "api"
path_prefix = "/api"
upstream = "api"
"#;

#[test]
fn a_valid_config_checks_ok_and_version_prints() {
    let (ok, text, path, _dir) = check(VALID, &[]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("{}: ok (1 listeners, 1 upstreams, 1 routes, 0 plugins)", path.display()));
    let version = Command::new(SLUICE).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("sluice {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn errors_name_the_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("listen = \"127.0.0.1:0\"", "lisen = \"127.0.0.1:0\"", ":4:1: unknown field `lisen`, expected one of"),
        ("upstream = \"api\"\n", "upstream = \"nope\"\n", ":15:12: upstream `nope` is not defined (defined: api)"),
        (
            "balance = \"least_conn\"",
            "balance = \"fastest\"",
            ":10:11: expected round_robin, least_conn, random, consistent_hash",
        ),
        ("\"127.0.0.1:9001\"", "\"127.0.0.1\"", ":9:13: backend `127.0.0.1` is not HOST:PORT"),
        (
            "protocol = \"http\"",
            "protocol = \"udp\"",
            ":5:12: unknown variant `udp`, expected one of `http`, `https`, `forward`, `tcp`",
        ),
        ("path_prefix = \"/api\"", "path_prefix = \"api\"", ":14:15: path_prefix must start with `/`"),
        (
            "listen = \"127.0.0.1:0\"",
            "listen = \"${SLUICE_TEST_UNSET}\"",
            ":4:10: environment variable `SLUICE_TEST_UNSET` is not set",
        ),
    ];
    for (from, to, expected) in cases {
        let config = VALID.replacen(from, to, 1);
        let (ok, text, path, _dir) = check(&config, &[]);
        assert!(!ok, "{to} must be refused");
        assert!(text.contains(&format!("{}", path.display())), "{text}");
        assert!(text.contains(expected), "for {to}: expected {expected:?} in {text}");
    }
    let (ok, text, _, _dir) = check(
        &VALID
            .replacen("name = \"api\"\nbackends", "name = \"public\"\nbackends", 1)
            .replace("upstream = \"api\"", "upstream = \"public\""),
        &[],
    );
    assert!(ok, "listener and upstream names live apart: {text}");
    let duplicate = format!("{VALID}\n[[route]]\nname = \"api\"\nupstream = \"api\"\n");
    let (ok, text, _, _dir) = check(&duplicate, &[]);
    assert!(!ok && text.contains(":18:8: duplicate route name `api`"), "{text}");

    // Two listeners, or a listener and the admin API, on one address (port 0 is any free port).
    let listener = |name: &str, listen: &str| {
        format!("[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"http\"\n")
    };
    let cases = [
        (
            format!("{}{}", listener("a", "127.0.0.1:8080"), listener("b", "127.0.0.1:8080")),
            ":7:10: 127.0.0.1:8080 is where listener `a` listens already; give each listener an address of its own",
        ),
        (
            format!("{}{}", listener("a", "0.0.0.0:8080"), listener("b", "127.0.0.1:8080")),
            ":7:10: 127.0.0.1:8080 is where listener `a` listens already",
        ),
        (listener("a", "127.0.0.1:9901"), ":3:10: 127.0.0.1:9901 is where the admin API listens already"),
    ];
    for (config, expected) in cases {
        let (ok, text, _, _dir) =
            check(&format!("{config}\n[[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n"), &[]);
        assert!(!ok && text.contains(expected), "expected {expected:?} in {text}");
    }
    let apart =
        format!("{}{}{}", listener("a", "127.0.0.1:0"), listener("b", "127.0.0.1:0"), listener("c", "127.0.0.1:8081"));
    let (ok, text, _, _dir) =
        check(&format!("{apart}\n[[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n"), &[]);
    assert!(ok, "{text}");
}

#[test]
fn environment_variables_are_substituted_everywhere_including_plugin_config() {
    let config = VALID.replacen("127.0.0.1:9001", "${SLUICE_TEST_BACKEND}", 1);
    let (ok, text, _, _dir) = check(&config, &[("SLUICE_TEST_BACKEND", "127.0.0.1:7000")]);
    assert!(ok, "{text}");
    // testkit refuses unknown config keys, so the substituted value must reach it as a known one.
    let plugin = format!(
        "{VALID}\n[[plugin]]\nname = \"t\"\npath = \"{}\"\n[plugin.config]\nmode = \"${{SLUICE_TEST_MODE}}\"\n",
        plugin_wasm("testkit").display()
    );
    let (ok, text, _, _dir) = check(&plugin, &[("SLUICE_TEST_MODE", "tag")]);
    assert!(ok, "{text}");
    let (ok, text, _, _dir) = check(&plugin, &[]);
    assert!(!ok && text.contains("plugin.config.mode: environment variable `SLUICE_TEST_MODE` is not set"), "{text}");
}
