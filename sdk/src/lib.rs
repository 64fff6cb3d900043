//! Write Sluice gateway plugins in Rust.
//!
//! A plugin for the Sluice API gateway is a WebAssembly component that the gateway calls at fixed points of a request,
//! its *hooks*. It can check and change requests, answer them itself, change responses and pick
//! the backend a request goes to, while the gateway keeps it in a sandbox: no files, no sockets,
//! no environment, a time deadline per hook call and a memory limit per instance. The contract is
//! one WIT file, `wit/plugin.wit` (`sluice:plugin@0.2.0`); this crate hides the bindings generated
//! from it behind a small, documented API:
//!
//! - [`Plugin`]: the trait your type implements; start here.
//! - [`Request`], [`Response`], [`Backend`]: what hooks see and change.
//! - [`Action`], [`ResponseAction`], [`Selection`]: what hooks decide.
//! - [`host`]: logging, the clock, random bytes, and shared state (counters, key-value store).
//! - [`testing`]: a native fake host and builders, for unit tests with plain `cargo test`.
//! - [`export_plugin!`]: makes your type the component's implementation of the hooks.
//!
//! # From nothing to a running plugin
//!
//! **1. A library crate.** `cdylib` makes the component; `rlib` lets `cargo test` and other crates
//! link the plugin natively.
//!
//! ```toml
//! [package]
//! name = "api-key-auth"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! sluice-sdk = { path = "../sluice/sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! **2. The plugin**, in `src/lib.rs`. This one lets a request through only if it carries one of
//! the configured API keys:
//!
//! ```
//! use sluice_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct ApiKeyAuth { header: String, keys: Vec<String> }
//!
//! impl Plugin for ApiKeyAuth {
//!     fn init(config: Config) -> Result<Self, String> { config.json() }
//!
//!     fn on_request(&mut self, req: &mut Request) -> Action {
//!         match req.header(&self.header) {
//!             Some(key) if self.keys.contains(&key) => Action::Continue,
//!             _ => Action::respond(401).body("missing or invalid API key"),
//!         }
//!     }
//! }
//!
//! export_plugin!(ApiKeyAuth);
//! ```
//!
//! `init` runs once per plugin instance with the plugin's config; the value it returns serves
//! many requests, one hook call at a time. The hooks you do not write (here `on_response` and
//! `select_backend`) are never called.
//!
//! **3. Build the component.**
//!
//! ```sh
//! rustup target add wasm32-wasip2          # once
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! The component is `target/wasm32-wasip2/release/api_key_auth.wasm` (Cargo turns the `-` of the
//! package name into `_`).
//!
//! **4. Load it**: declare it in the gateway config and name it in a route.
//!
//! ```toml
//! [[plugin]]
//! name = "auth"
//! path = "target/wasm32-wasip2/release/api_key_auth.wasm"  # relative to the config file
//! # on_error = "deny"    # a trap or deadline: deny answers 500, allow skips the plugin
//! # timeout_ms = 20      # deadline of one hook call
//! # memory_mb = 16       # memory limit of one instance
//! [plugin.config]        # handed to init as JSON
//! header = "x-api-key"
//! keys = ["${API_KEY_1}"]
//!
//! [[route]]
//! name = "api"
//! path_prefix = "/api"
//! upstream = "api"
//! plugins = ["auth"]     # on_request in this order, on_response in reverse
//! ```
//!
//! **5. Test it natively.** On targets other than `wasm32`, [`host`] talks to an in-memory fake,
//! and [`testing`] builds the values the gateway would pass:
//!
//! ```
//! # use sluice_sdk::prelude::*;
//! # #[derive(serde::Deserialize)]
//! # struct ApiKeyAuth { header: String, keys: Vec<String> }
//! # impl Plugin for ApiKeyAuth {
//! #     fn init(config: Config) -> Result<Self, String> { config.json() }
//! #     fn on_request(&mut self, req: &mut Request) -> Action {
//! #         match req.header(&self.header) {
//! #             Some(key) if self.keys.contains(&key) => Action::Continue,
//! #             _ => Action::respond(401).body("missing or invalid API key"),
//! #         }
//! #     }
//! # }
//! // In src/lib.rs, under #[cfg(test)] mod tests { use super::*; ... }
//! use sluice_sdk::testing;
//!
//! let mut auth: ApiKeyAuth =
//!     testing::init(r#"{"header": "x-api-key", "keys": ["k1"]}"#).unwrap();
//!
//! let mut req = testing::request("GET", "/api/users").header("x-api-key", "k1").build();
//! assert!(auth.on_request(&mut req).is_continue());
//!
//! let mut req = testing::request("GET", "/api/users").build();
//! let reply = auth.on_request(&mut req).reply().cloned().unwrap();
//! assert_eq!(reply.status, 401);
//! assert_eq!(reply.body_str(), Some("missing or invalid API key"));
//!
//! let err = testing::init::<ApiKeyAuth>("{}").err().unwrap();
//! assert_eq!(err, "invalid plugin config: missing field `header` at line 1 column 2");
//! ```
//!
//! # When hooks run
//!
//! ```text
//! downstream ─► route ─► on_request (route's plugins, in order) ─► select_backend ─► backend
//!                          │ Action::Respond                                            │
//!                          ▼                                                            ▼
//! downstream ◄──────────── on_response (in reverse, every plugin whose on_request ran) ◄┘
//! ```
//!
//! - Every hook call costs the gateway a crossing into the plugin. Response headers known at
//!   on-request time (limits, CORS, security headers) go through
//!   [`Request::set_response_header`], which the gateway applies to whatever response the request
//!   gets: such a plugin leaves `on_response` out, and the gateway never calls it.
//! - A hook's changes apply only when it returns normally. A panic traps: the request gets the
//!   plugin's `on_error` policy, the instance is thrown away and the next call gets a fresh one.
//! - An instance is reused across requests. Keep per-request data in the request context
//!   ([`Request::set_context`]), which later hooks of any plugin and the access log read; keep
//!   caches in your plugin's fields; keep state shared across instances (rate-limit counters) in
//!   [`host`]'s shared state.

#![deny(missing_docs)]

mod action;
pub mod alloc;
pub mod check;
mod config;
mod fields;
pub mod host;
mod message;
pub mod testing;

#[doc(hidden)]
#[path = "glue.rs"]
pub mod __glue;

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses = alloc::SizeClasses::new();

pub use action::{Action, Reply, ResponseAction, Selection};
pub use config::Config;
pub use message::{Backend, HeaderOp, Request, RequestChanges, Response, ResponseChanges, TlsInfo};

/// The bindings generated from `wit/plugin.wit`. Not part of the API: use the types above.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::__bindings",
    });
}

/// The names almost every plugin needs: `use sluice_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Backend, Config, Plugin, Reply, Request, Response, ResponseAction, Selection, export_plugin, host,
    };
}

/// A Sluice plugin: a value made from its config by [`Plugin::init`], whose hooks the gateway
/// calls.
///
/// Every hook has a default that tells the gateway "not implemented" (the WIT `not-implemented`
/// case); the gateway treats that call as "continue" and then stops calling the hook for this
/// plugin, so an unimplemented hook costs nothing. Implement the hooks you need.
///
/// An instance serves one hook call at a time and is reused across requests (or made afresh for
/// each call with `isolation = "fresh"`), so `&mut self` is yours alone during a call. A panic
/// in a hook traps the instance: the request gets the plugin's `on_error` policy.
pub trait Plugin: Sized + 'static {
    /// Makes the plugin from its `[plugin.config]` table (as JSON, see [`Config`]). Called once
    /// per instance, before any hook. An error fails the load, and so the config reload, with
    /// this message; name what was wrong.
    fn init(config: Config) -> Result<Self, String>;

    /// Called for each request on the plugin's routes, in the route's plugin order, after
    /// routing and path normalisation. Read and change method, path, query, headers and
    /// context; return [`Action::Continue`] or answer with [`Action::respond`].
    ///
    /// Default: not implemented (the request continues untouched).
    fn on_request(&mut self, req: &mut Request) -> Action {
        let _ = req;
        Action::NotImplemented
    }

    /// Called for each response, in reverse plugin order, by every plugin whose `on_request`
    /// ran (also when a plugin answered the request itself). Read and change status and
    /// headers; return [`ResponseAction::Continue`] or [`ResponseAction::replace`] it.
    ///
    /// Default: not implemented (the response goes on untouched).
    fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
        let _ = resp;
        ResponseAction::NotImplemented
    }

    /// Called to pick a backend when the upstream is configured with
    /// `balance = { plugin = "NAME" }`. `req` is the request as every `on_request` left it;
    /// `backends` are the upstream's healthy backends (on a retry, without the one that failed).
    /// Return an index into `backends` or [`Selection::Default`] for the upstream's own policy.
    ///
    /// Default: not implemented (the upstream's own policy).
    fn select_backend(&mut self, req: &Request, backends: &[Backend]) -> Selection {
        let _ = (req, backends);
        Selection::NotImplemented
    }
}

/// Makes a [`Plugin`] type the component's implementation of the hooks. Use it once per crate,
/// at the top level.
///
/// On `wasm32` it exports the hooks and embeds the SDK version in a `sluice-sdk-version` custom
/// section; on other targets it only checks that the type implements [`Plugin`], so the crate
/// still builds and tests natively.
///
/// ```
/// use sluice_sdk::prelude::*;
///
/// struct Nothing;
///
/// impl Plugin for Nothing {
///     fn init(_: Config) -> Result<Self, String> {
///         Ok(Nothing)
///     }
/// }
///
/// export_plugin!(Nothing);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            const _: () = {
                use $crate::__bindings::exports::sluice::plugin::hooks as __hooks;

                ::std::thread_local! {
                    static SLUICE_PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                        const { ::core::cell::RefCell::new(::core::option::Option::None) };
                }

                struct SluiceHooks;

                impl __hooks::Guest for SluiceHooks {
                    fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                        $crate::__glue::init(&SLUICE_PLUGIN, config)
                    }

                    fn on_request(request: __hooks::Request) -> __hooks::RequestOutcome {
                        $crate::__glue::on_request(&SLUICE_PLUGIN, request)
                    }

                    fn on_response(response: __hooks::ResponseHead) -> __hooks::ResponseOutcome {
                        $crate::__glue::on_response(&SLUICE_PLUGIN, response)
                    }

                    fn select_backend(
                        request: __hooks::Request,
                        backends: ::std::vec::Vec<__hooks::Backend>,
                    ) -> __hooks::Selection {
                        $crate::__glue::select_backend(&SLUICE_PLUGIN, request, backends)
                    }
                }

        $crate::__bindings::export!(SluiceHooks with_types_in $crate::__bindings);

                #[used]
                #[unsafe(link_section = "sluice-sdk-version")]
                static SLUICE_SDK_VERSION: [u8; $crate::__glue::SDK_VERSION_LEN] = $crate::__glue::SDK_VERSION_BYTES;
            };

            const fn assert_plugin<P: $crate::Plugin>() {}
            assert_plugin::<$plugin>();
        };
    };
}
