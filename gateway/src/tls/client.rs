//! TLS to an upstream's backends: verified against the system roots or the upstream's `ca`,
//! with the backend's host (or `server_name`) as the name, and an optional client certificate.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::files;
use crate::config::{UpstreamProtocol, UpstreamTls};

/// The system's trust roots, read once.
static SYSTEM_ROOTS: LazyLock<Result<Arc<RootCertStore>, String>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!("no system CA certificate could be read ({}); set `ca`", errors.join("; ")));
    }
    Ok(Arc::new(roots))
});

/// How to open TLS to one backend.
#[derive(Clone)]
pub struct BackendTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl BackendTls {
    /// The client config of an upstream: one per upstream, shared by its backends. The error
    /// names the upstream and the file.
    pub fn config(upstream: &str, tls: &UpstreamTls, protocol: UpstreamProtocol) -> Result<Arc<ClientConfig>, String> {
        let fail = |e: String| format!("upstream `{upstream}`: {e}");
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::VERSIONS)
            .map_err(|e| fail(e.to_string()))?;
        let builder = if tls.verify {
            let roots = match &tls.ca {
                Some(ca) => Arc::new(files::roots(ca).map_err(fail)?),
                None => SYSTEM_ROOTS.clone().map_err(fail)?,
            };
            builder.with_root_certificates(roots)
        } else {
            tracing::warn!(upstream, "danger_skip_verify = true: backend certificates are NOT verified");
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification))
        };
        let mut config = match &tls.client {
            Some(files) => {
                let (certified, _) = files::certified_key(files).map_err(fail)?;
                builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![match protocol {
            UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
            UpstreamProtocol::Http2 => b"h2".to_vec(),
        }];
        Ok(Arc::new(config))
    }

    /// TLS to the backend at `host` (the configured `server_name` overrides it).
    pub fn new(upstream: &str, config: Arc<ClientConfig>, tls: &UpstreamTls, host: &str) -> Result<BackendTls, String> {
        let name = tls.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            format!("upstream `{upstream}`: `{name}` is not a valid TLS server name; set `server_name`")
        })?;
        Ok(BackendTls { connector: TlsConnector::from(config), server_name })
    }

    /// The TLS handshake over a connected stream.
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<super::Stream> {
        let stream = self.connector.connect(self.server_name.clone(), stream).await?;
        Ok(super::Stream::Tls(Box::new(stream.into())))
    }
}

/// `danger_skip_verify = true`: accepts any certificate, still checks the handshake signatures.
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &super::provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &super::provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider().signature_verification_algorithms.supported_schemes()
    }
}
