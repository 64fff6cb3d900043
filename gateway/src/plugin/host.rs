//! What a plugin instance can reach: the `host` interface of the WIT, and an empty WASI.
//!
//! Every instance's store carries a [`HostState`]: the plugin's name (for logs and as the
//! namespace of its shared state), its memory limit and shared-state quota, and the line buffer of
//! what the guest writes to stdout or stderr (see `wasi`), which goes to the log a line at a time.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{StoreLimits, StoreLimitsBuilder};

use super::bindings::host::{self, Level, WindowCount};
use super::bindings::types;
use super::limits::MAX_RANDOM_BYTES;
use super::state::{self, SharedState, StateFull, Swap};
use crate::config::PluginConfig;

/// The data of one plugin instance's store.
pub struct HostState {
    plugin: Arc<str>,
    state: Arc<dyn SharedState>,
    /// The plugin's share of `state`, in bytes (`state_mb`).
    state_quota: usize,
    pub(super) limits: StoreLimits,
    output: Vec<u8>,
}

impl HostState {
    /// A sandbox for an instance of `plugin`, within the limits its `config` sets.
    pub fn new(plugin: Arc<str>, state: Arc<dyn SharedState>, config: &PluginConfig) -> HostState {
        HostState {
            plugin,
            state,
            state_quota: mib(config.state_mb),
            limits: StoreLimitsBuilder::new().memory_size(mib(config.memory_mb)).trap_on_grow_failure(true).build(),
            output: Vec::new(),
        }
    }

    /// Takes what the guest wrote to stdout or stderr; complete lines go to the log.
    pub(super) fn write_output(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
        while let Some(end) = self.output.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.output.drain(..=end).collect();
            self.log_output(&line[..end]);
        }
        if self.output.len() > 16 * 1024 {
            self.flush_output();
        }
    }

    /// Logs whatever the guest wrote that is not yet a complete line.
    pub(super) fn flush_output(&mut self) {
        if !self.output.is_empty() {
            let rest = std::mem::take(&mut self.output);
            self.log_output(&rest);
        }
    }

    fn log_output(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        if !line.trim().is_empty() {
            tracing::warn!(plugin = &*self.plugin, "{}", line.trim_end());
        }
    }
}

fn mib(n: u32) -> usize {
    n as usize * 1024 * 1024
}

/// A refused store, as the trap that ends the hook call.
fn trap(plugin: &str, full: StateFull) -> wasmtime::Error {
    wasmtime::Error::msg(format!("plugin `{plugin}`: {full}"))
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        state::now_ms()
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; len.min(MAX_RANDOM_BYTES) as usize];
        if let Err(e) = getrandom::fill(&mut bytes) {
            tracing::error!(plugin = &*self.plugin, error = %e, "cannot read random bytes");
        }
        bytes
    }

    fn counter_incr(&mut self, key: String, delta: i64, window_ms: u64) -> wasmtime::Result<WindowCount> {
        let window = Duration::from_millis(window_ms);
        let count = self
            .state
            .counter_incr(&self.plugin, self.state_quota, &key, delta, window)
            .map_err(|full| trap(&self.plugin, full))?;
        Ok(WindowCount {
            current: count.current,
            previous: count.previous,
            remaining_ms: count.remaining.as_millis() as u64,
        })
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.state.kv_get(&self.plugin, &key)
    }

    fn kv_set(&mut self, key: String, value: String, ttl_ms: u64) -> wasmtime::Result<()> {
        let ttl = Duration::from_millis(ttl_ms);
        self.state.kv_set(&self.plugin, self.state_quota, &key, value, ttl).map_err(|full| trap(&self.plugin, full))
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        new: Option<String>,
        ttl_ms: u64,
    ) -> wasmtime::Result<bool> {
        let swap = Swap { expected: expected.as_deref(), new };
        let ttl = Duration::from_millis(ttl_ms);
        self.state
            .kv_compare_and_swap(&self.plugin, self.state_quota, &key, swap, ttl)
            .map_err(|full| trap(&self.plugin, full))
    }
}
