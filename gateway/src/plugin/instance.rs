//! A loaded plugin and its instances: taken from a per-worker pool for one hook call, given back
//! when the call returns, thrown away after any trap, deadline or limit.
//!
//! Hook calls are synchronous and never span a backend's answer, so a worker needs about one
//! instance per plugin however many requests are in flight. `isolation = "fresh"` skips the pool:
//! every call gets a new instance.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thread_local::ThreadLocal;
use wasmtime::{Engine, Store, Trap};

use super::bindings::hooks::Guest;
use super::bindings::{Plugin, PluginPre};
use super::clock::Ticking;
use super::hook_calls;
use super::host::HostState;
use super::limits::{EPOCH_TICK, INIT_TIMEOUT, MAX_IDLE_PER_WORKER};
use super::state::SharedState;
use crate::config::{Isolation, PluginConfig};
use crate::metrics::{HotCounter, METRICS};

/// The hooks, for bookkeeping of which ones a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on-request`.
    OnRequest,
    /// `on-response`.
    OnResponse,
    /// `select-backend`.
    SelectBackend,
}

impl Hook {
    /// The hook's name in the WIT.
    pub fn name(self) -> &'static str {
        match self {
            Hook::OnRequest => "on-request",
            Hook::OnResponse => "on-response",
            Hook::SelectBackend => "select-backend",
        }
    }
}

/// Why a hook call failed. The instance that failed has been discarded.
#[derive(Debug)]
pub enum PluginFailure {
    /// The call ran past `timeout_ms`.
    Timeout { timeout_ms: u64 },
    /// The guest trapped (a panic, an out-of-bounds access) or hit its memory limit.
    Trap(String),
    /// A new instance's `init` failed.
    Init(String),
    /// The plugin answered something the host cannot use (an unknown backend index, a bad header).
    Invalid(String),
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginFailure::Timeout { timeout_ms } => write!(f, "ran past its {timeout_ms} ms deadline"),
            PluginFailure::Trap(why) => write!(f, "trapped: {why}"),
            PluginFailure::Init(why) => write!(f, "init failed: {why}"),
            PluginFailure::Invalid(why) => write!(f, "returned an invalid result: {why}"),
        }
    }
}

/// A live instance: its store and its exports.
struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
}

/// One `[[plugin]]` of a snapshot, compiled and ready to instantiate.
pub struct LoadedPlugin {
    /// As configured.
    pub config: PluginConfig,
    /// The SHA-256 of the Wasm file, hex.
    pub sha256: String,
    name: Arc<str>,
    engine: Engine,
    pre: PluginPre<HostState>,
    state: Arc<dyn SharedState>,
    /// Cleared when the plugin answers `not-implemented`, so the hook is not called again.
    implemented: [AtomicBool; 3],
    /// `sluice_plugin_calls_total` by hook, then by outcome (ok, error, timeout).
    calls: [[HotCounter; 3]; 3],
    /// Boxed: every call pops and pushes one, which then moves a pointer, not the instance.
    #[expect(clippy::vec_box, reason = "an instance is moved out and back in on every hook call")]
    idle: ThreadLocal<RefCell<Vec<Box<Instance>>>>,
    config_json: String,
    /// `timeout_ms` in epoch ticks, worked out once: a division of 128-bit numbers per call
    /// otherwise.
    deadline_ticks: u64,
    /// Keeps the epoch clock, and so this plugin's deadlines, running.
    _ticking: Ticking,
}

impl LoadedPlugin {
    pub(super) fn new(
        config: PluginConfig,
        sha256: String,
        engine: Engine,
        pre: PluginPre<HostState>,
        state: Arc<dyn SharedState>,
        ticking: Ticking,
    ) -> LoadedPlugin {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let calls = [Hook::OnRequest, Hook::OnResponse, Hook::SelectBackend]
            .map(|hook| ["ok", "error", "timeout"].map(|outcome| METRICS.plugin_calls(&name, hook.name(), outcome)));
        LoadedPlugin {
            calls,
            name,
            config_json: config.config.to_string(),
            deadline_ticks: ticks(config.timeout),
            config,
            sha256,
            engine,
            pre,
            state,
            implemented: [AtomicBool::new(true), AtomicBool::new(true), AtomicBool::new(true)],
            idle: ThreadLocal::new(),
            _ticking: ticking,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the plugin implements `hook` (as far as the host has learnt).
    pub fn implements(&self, hook: Hook) -> bool {
        self.implemented[hook as usize].load(Ordering::Relaxed)
    }

    /// Records that the plugin answered `not-implemented` for `hook`.
    pub fn mark_unimplemented(&self, hook: Hook) {
        self.implemented[hook as usize].store(false, Ordering::Relaxed);
    }

    /// Creates an instance and runs `init`, as every new instance does.
    fn instantiate(&self) -> Result<Box<Instance>, PluginFailure> {
        let host = HostState::new(self.name.clone(), self.state.clone(), &self.config);
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(INIT_TIMEOUT));
        let plugin = self.pre.instantiate(&mut store).map_err(|e| failure(&e, INIT_TIMEOUT))?;
        hook_calls::check(plugin.sluice_plugin_hooks(), &store).map_err(|e| failure(&e, INIT_TIMEOUT))?;
        plugin
            .sluice_plugin_hooks()
            .call_init(&mut store, &self.config_json)
            .map_err(|e| failure(&e, INIT_TIMEOUT))?
            .map_err(PluginFailure::Init)?;
        Ok(Box::new(Instance { store, plugin }))
    }

    /// Proves at load time that an instance can be created and initialised.
    pub(super) fn check_init(&self) -> Result<(), PluginFailure> {
        self.instantiate().map(drop)
    }

    /// Counts a hook call in `sluice_plugin_calls_total` once its result is known: a result the
    /// gateway refused (an invalid header, say) counts as an error, like a trap.
    pub fn count<R>(&self, hook: Hook, result: &Result<R, PluginFailure>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(PluginFailure::Timeout { .. }) => 2,
            Err(_) => 1,
        };
        self.calls[hook as usize][outcome].inc();
    }

    /// Runs one hook call on a pooled (or, with `isolation = "fresh"`, a new) instance under the
    /// plugin's deadline. A failed instance is dropped, never pooled again. The caller checks the
    /// result, then [`count`](Self::count)s the call.
    pub fn call<R>(
        &self,
        hook: impl FnOnce(&Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let pooled = self.config.isolation == Isolation::Pooled;
        let idle = self.idle.get_or_default();
        let reused = if pooled { idle.borrow_mut().pop() } else { None };
        let mut instance = match reused {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        instance.store.set_epoch_deadline(self.deadline_ticks);
        let result = hook(instance.plugin.sluice_plugin_hooks(), &mut instance.store);
        match result {
            Ok(value) => {
                if pooled {
                    let mut idle = idle.borrow_mut();
                    if idle.len() < MAX_IDLE_PER_WORKER {
                        idle.push(instance);
                    }
                }
                Ok(value)
            }
            Err(e) => Err(failure(&e, self.config.timeout)),
        }
    }
}

/// Epoch ticks for a deadline, rounded up, plus one because the current tick is partly gone. At
/// most half the counter's range (millions of years of ticks): wasmtime adds the current epoch to
/// it unchecked, and a `timeout_ms` near `u64::MAX` must mean a long deadline, not an overflow.
fn ticks(deadline: std::time::Duration) -> u64 {
    let ticks = deadline.as_nanos() / EPOCH_TICK.as_nanos() + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX).min(u64::MAX / 2)
}

/// Classifies a failed call.
fn failure(error: &wasmtime::Error, deadline: std::time::Duration) -> PluginFailure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFailure::Timeout { timeout_ms: deadline.as_millis() as u64 },
        _ => PluginFailure::Trap(error.root_cause().to_string()),
    }
}
