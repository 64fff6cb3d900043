//! What a plugin instance can reach: the `host` interface of the WIT, and an empty WASI.
//!
//! Every instance's store carries a [`HostState`]: the plugin's name (for logs and as the
//! namespace of its shared state), its memory limit, and a WASI context that grants nothing (no
//! files, sockets, environment or arguments) so that guests built for wasip2 link, and a guest's
//! panic message reaches the gateway's stderr.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, Level, WindowCount};
use super::bindings::types;
use super::limits::MAX_RANDOM_BYTES;
use super::state::{self, SharedState};

/// The data of one plugin instance's store.
pub struct HostState {
    plugin: Arc<str>,
    state: Arc<dyn SharedState>,
    pub(super) limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// A sandbox for an instance of `plugin` with `memory_mb` of linear memory at most.
    pub fn new(plugin: Arc<str>, state: Arc<dyn SharedState>, memory_mb: u32) -> HostState {
        HostState {
            plugin,
            state,
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_mb as usize * 1024 * 1024)
                .trap_on_grow_failure(true)
                .build(),
            wasi: WasiCtx::builder().inherit_stderr().build(),
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
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

    fn counter_incr(&mut self, key: String, delta: i64, window_ms: u64) -> WindowCount {
        let count = self.state.counter_incr(&self.plugin, &key, delta, Duration::from_millis(window_ms));
        WindowCount {
            current: count.current,
            previous: count.previous,
            remaining_ms: count.remaining.as_millis() as u64,
        }
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.state.kv_get(&self.plugin, &key)
    }

    fn kv_set(&mut self, key: String, value: String, ttl_ms: u64) {
        self.state.kv_set(&self.plugin, &key, value, Duration::from_millis(ttl_ms));
    }

    fn kv_compare_and_swap(&mut self, key: String, expected: Option<String>, new: Option<String>, ttl_ms: u64) -> bool {
        self.state.kv_compare_and_swap(&self.plugin, &key, expected.as_deref(), new, Duration::from_millis(ttl_ms))
    }
}
