//! An `https` listener's TLS: certificates chosen by SNI, ALPN, optional client certificates.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::files;
use crate::config::ListenerTls;
use crate::plugin::bindings::types;

/// A listener's certificates, each with the names it serves.
#[derive(Debug)]
struct BySni {
    /// In config order; the first is the default.
    certificates: Vec<(Arc<CertifiedKey>, Vec<String>)>,
}

impl BySni {
    /// The first certificate whose names cover `name`: an exact name, or `*.rest` for one label
    /// before `rest`.
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        let parent = name.split_once('.').map(|(_, rest)| rest);
        self.certificates.iter().find_map(|(key, names)| {
            names
                .iter()
                .any(|n| *n == name || n.strip_prefix("*.").is_some_and(|suffix| Some(suffix) == parent))
                .then_some(key)
        })
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|name| self.find(name));
        found.or_else(|| self.certificates.first().map(|(key, _)| key)).cloned()
    }
}

/// What an `https` listener needs at accept time.
pub struct ServerTls {
    /// Performs the handshake.
    pub acceptor: TlsAcceptor,
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: std::time::Duration,
}

impl ServerTls {
    /// Reads and checks the listener's certificates, keys and client CA. The error names the
    /// listener and the file.
    pub fn build(listener: &str, config: &ListenerTls) -> Result<ServerTls, String> {
        let fail = |e: String| format!("listener `{listener}`: {e}");
        let certificates =
            config.certificates.iter().map(files::certified_key).collect::<Result<_, _>>().map_err(fail)?;
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::VERSIONS)
            .map_err(|e| fail(e.to_string()))?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let roots = Arc::new(files::roots(ca).map_err(fail)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, super::provider())
                    .build()
                    .map_err(|e| fail(format!("the client CA bundle {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(Arc::new(BySni { certificates }));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(server)), handshake_timeout: config.handshake_timeout })
    }
}

/// What plugins learn about a TLS connection, read once when its handshake completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// The name the client asked for by SNI.
    pub server_name: Option<String>,
    /// The subject of the verified client certificate (`CN=alice, O=Example`).
    pub client_subject: Option<String>,
}

impl TlsFacts {
    /// The facts of a server connection whose handshake is complete.
    pub fn of(connection: &rustls::ServerConnection) -> TlsFacts {
        let client_subject = connection.peer_certificates().and_then(|chain| chain.first()).and_then(|cert| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
            Some(cert.subject().to_string())
        });
        TlsFacts { server_name: connection.server_name().map(str::to_string), client_subject }
    }

    /// The facts as a hook call hands them over.
    pub fn view(&self) -> types::TlsInfo<'_> {
        types::TlsInfo { server_name: self.server_name.as_deref(), client_subject: self.client_subject.as_deref() }
    }
}
