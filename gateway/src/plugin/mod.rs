//! Wasm plugins: compiled once per snapshot (the factory, [`PluginRuntime`]), instantiated per
//! worker and called once per hook ([`LoadedPlugin`]), applied to requests and responses by
//! [`chain`].
//!
//! The contract is `wit/plugin.wit`; [`bindings`] is generated from it. Sandbox limits live in
//! [`limits`]; state shared across instances and reloads in [`state`].

pub mod bindings;
pub mod chain;
mod clock;
mod disk_cache;
pub mod fields;
mod header_names;
mod hook_calls;
mod host;
mod instance;
pub mod limits;
mod runtime;
pub mod state;
mod wasi;

pub use instance::{Hook, LoadedPlugin, PluginFailure};
pub use runtime::PluginRuntime;
