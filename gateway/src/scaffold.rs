//! `sluice plugin new NAME`: a plugin crate that builds and passes its test as it is, so a new
//! plugin starts from working code rather than from the docs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The SDK this binary was built with, for the new crate's path dependency.
const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// Creates the crate `name` in `dir` (default `./NAME`), depending on the SDK at `sdk` (default:
/// the one this gateway was built from). Returns the crate's folder.
pub fn new_plugin(name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("`{name}` is not a plugin name: use lower-case letters, digits and `-`, starting with a letter");
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} already exists and is not empty: choose another --dir", dir.display());
    }
    let sdk = std::fs::canonicalize(sdk.unwrap_or(Path::new(SDK)))
        .context("cannot find the sluice-sdk crate: pass its folder with --sdk")?;
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    let crate_name = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("README.md", README.replace("{name}", name).replace("{crate}", &crate_name)),
    ];
    for (file, contents) in files {
        std::fs::write(dir.join(file), contents).with_context(|| format!("cannot write {file}"))?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# cdylib: the Wasm component the gateway loads; rlib: lets `cargo test` run the plugin natively.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
sluice-sdk = {{ path = "{}" }}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
lto = true
codegen-units = 1
"#,
        sdk.display()
    )
}

const LIB_RS: &str = r##"//! `{name}`: a Sluice plugin.
//!
//! It greets: every request it passes gets the header `x-greeting`, and every response the header
//! named in its config. Replace the logic with your own; the shape stays the same.

use serde::Deserialize;
use sluice_sdk::prelude::*;

/// The plugin, built by `init` from the `[plugin.config]` table of the gateway config. It lives
/// for as long as its instance, serving one hook call at a time: keep per-request data in the
/// request context, not here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Greeter {
    /// What to greet with.
    #[serde(default = "default_greeting")]
    greeting: String,
    /// The response header that carries the greeting back.
    #[serde(default = "default_header")]
    response_header: String,
}

fn default_greeting() -> String {
    "hello".into()
}

fn default_header() -> String {
    "x-greeted".into()
}

impl Plugin for Greeter {
    /// Runs once per instance: parse the config here, not per request.
    fn init(config: Config) -> Result<Self, String> {
        config.json()
    }

    /// Runs for each request on the plugin's routes: change it, or answer it yourself.
    fn on_request(&mut self, req: &mut Request) -> Action {
        if req.header_str("x-greeting").is_some_and(|g| g == "nope") {
            return Action::respond(403).body("no greetings today");
        }
        req.set_header("x-greeting", self.greeting.clone());
        req.set_context("greeted", "yes");
        Action::Continue
    }

    /// Runs for each response of a request whose on_request ran.
    fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
        if resp.context("greeted") == Some("yes") {
            resp.set_header(self.response_header.clone(), self.greeting.clone());
        }
        ResponseAction::Continue
    }
}

export_plugin!(Greeter);

#[cfg(test)]
mod tests {
    use sluice_sdk::testing;

    use super::*;

    #[test]
    fn greets_requests_and_responses() {
        let mut plugin = testing::init::<Greeter>(r#"{"greeting": "hi"}"#).unwrap();
        let mut req = testing::request("GET", "/").build();
        assert!(plugin.on_request(&mut req).is_continue());
        assert_eq!(req.header("x-greeting").as_deref(), Some("hi"));

        let mut resp = testing::response(200).context("greeted", "yes").build();
        assert!(matches!(plugin.on_response(&mut resp), ResponseAction::Continue));
        assert_eq!(resp.header("x-greeted").as_deref(), Some("hi"));
    }

    #[test]
    fn refuses_when_asked_to() {
        let mut plugin = testing::init::<Greeter>("{}").unwrap();
        let mut req = testing::request("GET", "/").header("x-greeting", "nope").build();
        let action = plugin.on_request(&mut req);
        assert_eq!(action.reply().map(|r| r.status), Some(403));
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        assert!(testing::init::<Greeter>(r#"{"greting": "typo"}"#).is_err());
    }
}
"##;

const README: &str = r#"# {name}

A Sluice plugin, scaffolded by `sluice plugin new {name}`.

## Build and test

```sh
rustup target add wasm32-wasip2                 # once
cargo test                                      # unit tests, natively, through sluice_sdk::testing
cargo build --release --target wasm32-wasip2    # the component
```

The component is `target/wasm32-wasip2/release/{crate}.wasm`.

## Use it

```toml
[[plugin]]
name = "{name}"
path = "target/wasm32-wasip2/release/{crate}.wasm"   # relative to the gateway config
# on_error = "deny"     # deny: a failing call answers 500 | allow: the plugin is skipped
# timeout_ms = 20       # deadline of one hook call
# memory_mb = 16        # memory limit of one instance
# state_mb = 256        # the most its shared state (counters, stored values) may take
[plugin.config]
greeting = "hello"            # default "hello"
response_header = "x-greeted" # default "x-greeted"

[[route]]
name = "greeted"
upstream = "api"
plugins = ["{name}"]
```
"#;
