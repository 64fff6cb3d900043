//! The config loader on any text: an error or a config, never a panic, and every error renders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(error) = sluice::config::parse(std::path::Path::new("/etc/sluice/fuzz.toml"), text) {
        let _ = error.to_string();
    }
});
