//! The plugin factory: one wasmtime engine for the process, compiling each plugin once.
//!
//! Compiled code is cached by the SHA-256 of the Wasm file, in memory for reloads and on disk
//! ([`DiskCache`]) for restarts, so an unchanged plugin is not compiled again. Loading also proves the plugin usable before it can serve: the contract version is
//! checked and one instance runs `init`, so a plugin whose init fails is refused at load with its
//! own message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::PluginPre;
use super::clock::EpochClock;
use super::disk_cache::DiskCache;
use super::host::HostState;
use super::instance::LoadedPlugin;
use super::limits::MAX_MEMORY_MB;
use super::state::{self, InMemoryState, SharedState};
use crate::config::PluginConfig;

/// The contract this gateway implements; plugins must export its `hooks` at the same major.minor.
pub const CONTRACT: &str = "sluice:plugin@0.2";

/// The process-wide engine, linker and shared state.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    clock: EpochClock,
    state: Arc<dyn SharedState>,
    cache: Option<DiskCache>,
    /// Components by the SHA-256 of their Wasm, so a reload compiles only what changed.
    compiled: Arc<Mutex<HashMap<String, Component>>>,
    /// The instances the pooling allocator holds at once, fixed when the engine starts.
    capacity: u32,
}

impl PluginRuntime {
    /// Creates the engine (a pooling allocator of `capacity` instances, epoch deadlines) and starts
    /// its epoch clock.
    pub fn new(capacity: u32) -> anyhow::Result<PluginRuntime> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(capacity)
            .total_core_instances(capacity.saturating_mul(4))
            .total_memories(capacity.saturating_mul(2))
            .total_tables(capacity.saturating_mul(2))
            .max_memory_size(MAX_MEMORY_MB as usize * 1024 * 1024);
        let mut config = Config::new();
        config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(|e| {
            anyhow::anyhow!("cannot start the Wasm engine with room for {capacity} plugin instances: {e}")
        })?;
        let clock = EpochClock::start(&engine)?;
        let state = Arc::new(InMemoryState::default());
        state::sweep_every_interval(Arc::downgrade(&state))
            .map_err(|e| anyhow::anyhow!("cannot start the thread that sweeps plugin state: {e}"))?;
        Ok(PluginRuntime { engine, clock, state, cache: DiskCache::open(), compiled: Arc::default(), capacity })
    }

    /// Whether `needed` instances (see [`instances_needed`](super::limits::instances_needed)) fit
    /// in the engine's pool; the error says what to do.
    pub fn check_capacity(&self, needed: u32) -> Result<(), String> {
        if needed > self.capacity {
            return Err(format!(
                "the plugins would need up to {needed} instances (one per plugin and worker, for the old \
                 and the new config while a reload overlaps them) but the gateway started with room for \
                 {}: restart it to size the pool for this config, or use fewer plugins or workers",
                self.capacity
            ));
        }
        Ok(())
    }

    /// Loads the plugin `config` names: read, compile (or take from the cache), check the
    /// contract, and run `init` once. The error says what is wrong with which plugin.
    pub fn load(&self, config: &PluginConfig) -> Result<LoadedPlugin, String> {
        let name = &config.name;
        let fail = |what: String| format!("plugin `{name}` ({}): {what}", config.path.display());
        if config.memory_mb > MAX_MEMORY_MB {
            return Err(fail(format!("memory_mb = {} exceeds the maximum of {MAX_MEMORY_MB}", config.memory_mb)));
        }
        let wasm = std::fs::read(&config.path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let sha256 = hex(&Sha256::digest(&wasm));
        let known = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&sha256).cloned();
        let component = match known {
            Some(component) => component,
            None => {
                let component = match &self.cache {
                    Some(cache) => cache.component(&self.engine, &wasm, &sha256),
                    None => Component::new(&self.engine, &wasm),
                }
                .map_err(|e| fail(format!("not a valid Wasm component: {e}")))?;
                self.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(sha256.clone(), component.clone());
                component
            }
        };
        check_contract(&self.engine, &component).map_err(fail)?;
        let pre = self.link(&component).map_err(|e| fail(format!("cannot be linked: {e}")))?;
        let plugin =
            LoadedPlugin::new(config.clone(), sha256, self.engine.clone(), pre, self.state.clone(), self.clock.hold());
        plugin.check_init().map_err(|e| fail(e.to_string()))?;
        Ok(plugin)
    }

    /// Links a component against the host interface and the empty WASI it imports.
    fn link(&self, component: &Component) -> wasmtime::Result<PluginPre<HostState>> {
        let mut linker = Linker::new(&self.engine);
        super::bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
        super::wasi::add_to_linker(&mut linker, &self.engine, component)?;
        PluginPre::new(linker.instantiate_pre(component)?)
    }

    /// Forgets compiled components other than `kept` (by SHA-256), once a reload no longer needs them.
    pub fn retain_compiled(&self, kept: &[&str]) {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).retain(|sha, _| kept.contains(&sha.as_str()));
    }
}

/// Checks that the component exports the hooks of a compatible contract version.
fn check_contract(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let hooks = exports.iter().find(|name| name.starts_with("sluice:plugin/hooks"));
    match hooks {
        Some(name)
            if name.starts_with(&format!("{}.", CONTRACT.replacen("sluice:plugin", "sluice:plugin/hooks", 1))) =>
        {
            Ok(())
        }
        Some(name) => {
            let version = name.split_once('@').map_or("no version", |(_, v)| v);
            Err(format!(
                "built against contract sluice:plugin@{version}, but this gateway implements {CONTRACT}.x; rebuild it with a matching sluice-sdk"
            ))
        }
        None => Err(format!(
            "not a Sluice plugin: it does not export sluice:plugin/hooks (it exports: {})",
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
