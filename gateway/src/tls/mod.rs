//! TLS with rustls: `https` listeners (certificates by SNI, ALPN, optional client certificates)
//! and upstreams spoken to over TLS.
//!
//! Everything here is built when a snapshot is built, so certificates and keys are read, checked
//! and refused (expired, not matching, unreadable) at load, with the file named, and a reload picks
//! up renewed files. Connections then use the snapshot's prebuilt rustls configs: nothing is read
//! or parsed per connection but the client certificate's subject, once, for plugins.

mod client;
mod files;
mod server;
mod stream;

pub use client::BackendTls;
pub use server::{ServerTls, TlsFacts};
pub use stream::Stream;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider: ring, TLS 1.2 and 1.3 cipher suites.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// TLS 1.2 and 1.3, nothing older (rustls has nothing older).
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
