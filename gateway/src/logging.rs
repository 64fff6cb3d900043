//! Log output: human-readable text or JSON lines on stderr, as `[log] format` says.
//!
//! `RUST_LOG` overrides the level filter (default `info`). Access lines go to the target
//! `sluice::access` so they can be filtered apart from the gateway's own messages.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The tracing target of access log lines.
pub const ACCESS: &str = "sluice::access";

/// Installs the global subscriber; call once, before serving.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("sluice: logging was already set up: {e}");
    }
}
