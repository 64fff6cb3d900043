//! End-to-end tests: a real `sluice` process, real backends and real clients on 127.0.0.1.

mod support;

mod admin;
mod backend_framing;
mod config;
mod drain;
mod errors;
mod example_plugins_a;
mod example_plugins_b;
mod forward_proxy;
mod forwarding;
mod limits;
mod plugins;
mod protocols;
mod reload;
mod resilience;
mod routing;
mod smuggling;
mod streaming;
mod tcp;
mod tls;
