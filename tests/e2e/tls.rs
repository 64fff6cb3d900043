//! TLS: https listeners (HTTP/1.1 and HTTP/2, certificates by SNI, client certificates), refused
//! certificate files, bad handshakes, reloads, and upstreams over TLS. Certificates are made here
//! with rcgen; clients are curl and rustls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A test certificate authority that issues certificates into a folder.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
    pem: PathBuf,
}

/// A certificate and its key, as files and as rustls values.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Sluice Test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = TempDir::new();
        let pem = dir.write("ca.pem", &cert.pem());
        Ca { issuer: Issuer::new(params, key), dir, pem }
    }

    /// A certificate for `names` with common name `cn`, written as `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, cn: &str, names: &[&str]) -> Issued {
        self.issue_with(file, cn, names, |_| {})
    }

    fn issue_with(&self, file: &str, cn: &str, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: self.dir.write(&format!("{file}.pem"), &cert.pem()),
            key: self.dir.write(&format!("{file}.key"), &key.serialize_pem()),
            chain: vec![cert.der().clone()],
            private: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.pem).unwrap();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `{ cert = "...", key = "..." }`.
fn pair(issued: &Issued) -> String {
    format!("{{ cert = \"{}\", key = \"{}\" }}", issued.cert.display(), issued.key.display())
}

/// An https listener named `public` with `tls` (and more listener keys in `extra`), a route to
/// `backend` through the testkit plugin that reports TLS facts in request headers.
fn https_config(tls: &str, extra: &str, backend: &Backend) -> String {
    format!(
        "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls = {tls}\n{extra}\n\n{}\n{}\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"facts\"]\n",
        upstream("u", &[backend]),
        testkit("facts", "tls", ""),
    )
}

/// curl to `https://NAME:PORT/` at the gateway, trusting `ca`; prints the HTTP version then the body.
async fn curl_https(gateway: SocketAddr, name: &str, ca: &Path, extra: &[&str]) -> (i32, String, String) {
    let resolve = format!("{name}:{}:127.0.0.1", gateway.port());
    let url = format!("https://{name}:{}/", gateway.port());
    let ca = ca.display().to_string();
    let mut args = vec!["--resolve", &resolve, "--cacert", &ca, "--write-out", "\n%{http_version}"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

/// A GET over rustls to `addr` with SNI `name`, trusting `ca`, presenting `client` when given.
async fn rustls_get(addr: SocketAddr, name: &str, ca: &Ca, client: Option<&Issued>) -> Result<Reply, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let config = match client {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.private.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get("/").header("host", "a.test").body(full("")).unwrap();
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() })
}

#[tokio::test]
async fn https_serves_http1_and_http2_with_the_certificate_the_client_named() {
    let ca = Ca::new();
    let a = ca.issue("a", "a.test", &["a.test", "*.a.test"]);
    let b = ca.issue("b", "b.test", &["b.test"]);
    let backend = Backend::named("tls-1").await;
    let gateway = Gateway::start(&https_config(&format!("[{}, {}]", pair(&a), pair(&b)), "", &backend));

    let (code, out, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--http1.1"]).await;
    assert_eq!((code, out.as_str()), (0, "tls-1\n1.1"), "{err}");
    let seen = backend.last();
    assert_eq!(seen.headers["x-tls-server-name"], "a.test");
    assert_eq!(seen.headers["x-tls-client-subject"], "-");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // HTTP/2 by ALPN, and the second certificate by SNI (curl checks the name against it).
    let (code, out, err) = curl_https(gateway.addr(), "b.test", &ca.pem, &["--http2"]).await;
    assert_eq!((code, out.as_str()), (0, "tls-1\n2"), "{err}");
    assert_eq!(backend.last().headers["x-tls-server-name"], "b.test");

    // A wildcard name of the first certificate.
    let (code, out, err) = curl_https(gateway.addr(), "api.a.test", &ca.pem, &[]).await;
    assert_eq!((code, out.as_str()), (0, "tls-1\n2"), "{err}");

    // A name no certificate has gets the first (default) one, which the client then refuses.
    let (code, _, err) = curl_https(gateway.addr(), "c.test", &ca.pem, &["--verbose"]).await;
    assert_eq!(code, 60, "curl refuses a certificate that is not for c.test: {err}");
    assert!(err.contains("subject: CN=a.test"), "the default certificate was served: {err}");

    // TLS 1.1 is refused; 1.2 and 1.3 are served.
    let (code, _, _) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--tlsv1.1", "--tls-max", "1.1"]).await;
    assert_ne!(code, 0, "TLS 1.1 must be refused");
    for version in ["1.2", "1.3"] {
        let flag = format!("--tlsv{version}");
        let (code, out, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &[&flag, "--tls-max", version]).await;
        assert_eq!((code, out.as_str()), (0, "tls-1\n2"), "TLS {version}: {err}");
    }
}

/// Runs `sluice check` on `config`; returns whether it passed and what it printed.
fn check(dir: &TempDir, config: &str) -> (bool, String) {
    let path = dir.write("check.toml", &format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{config}"));
    let output = std::process::Command::new(SLUICE).args(["check", "-c"]).arg(&path).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned())
}

#[tokio::test]
async fn certificates_that_cannot_serve_are_refused_at_load_naming_the_file() {
    let ca = Ca::new();
    let good = ca.issue("good", "a.test", &["a.test"]);
    let other = ca.issue("other", "b.test", &["b.test"]);
    let expired = ca.issue_with("expired", "old.test", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let backend = Backend::named("unused").await;
    let not_pem = ca.dir.write("not-pem.pem", "hello\n");
    let missing = ca.dir.0.join("missing.pem");
    let cases = [
        (pair(&expired), format!("the certificate {} expired on", expired.cert.display())),
        (
            format!("{{ cert = \"{}\", key = \"{}\" }}", good.cert.display(), other.key.display()),
            format!(
                "the private key {} does not belong to the certificate {}",
                other.key.display(),
                good.cert.display()
            ),
        ),
        (
            format!("{{ cert = \"{}\", key = \"{}\" }}", missing.display(), good.key.display()),
            format!("cannot read the certificate {}: No such file or directory", missing.display()),
        ),
        (
            format!("{{ cert = \"{}\", key = \"{}\" }}", not_pem.display(), good.key.display()),
            format!("the certificate {} holds no certificate", not_pem.display()),
        ),
        (
            format!("{{ cert = \"{}\", key = \"{}\" }}", good.cert.display(), good.cert.display()),
            format!("the private key {} cannot be read", good.cert.display()),
        ),
    ];
    for (tls, expected) in cases {
        let (ok, text) = check(&ca.dir, &https_config(&tls, "", &backend));
        assert!(
            !ok && text.contains("listener `public`") && text.contains(&expected),
            "expected {expected:?}:\n{text}"
        );
    }
    let (ok, text) = check(&ca.dir, &https_config(&pair(&good), "", &backend));
    assert!(ok, "{text}");
    let (ok, text) = check(&ca.dir, &https_config("[]", "", &backend));
    assert!(!ok && text.contains("`tls` lists no certificate"), "{text}");
    let http_with_tls = https_config(&pair(&good), "", &backend).replace("\"https\"", "\"http\"");
    let (ok, text) = check(&ca.dir, &http_with_tls);
    assert!(!ok && text.contains("`tls` does not apply to an http listener"), "{text}");
}

#[tokio::test]
async fn bad_and_slow_handshakes_are_cut_off_without_disturbing_other_clients() {
    let ca = Ca::new();
    let a = ca.issue("a", "a.test", &["a.test"]);
    let backend = Backend::named("steady").await;
    let gateway = Gateway::start(&https_config(&pair(&a), "handshake_timeout_ms = 300", &backend));

    // Garbage instead of a ClientHello: the connection is closed.
    let mut garbage = TcpStream::connect(gateway.addr()).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(gateway.addr()).await.unwrap();

    let (code, out, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &[]).await;
    assert_eq!((code, out.as_str()), (0, "steady\n2"), "{err}");

    // Each is closed by the gateway (after a TLS alert for the garbage): reading ends.
    for (name, stream) in [("garbage", &mut garbage), ("silent", &mut silent)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the {name} connection is closed");
    }

    let (code, out, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--http1.1"]).await;
    assert_eq!((code, out.as_str()), (0, "steady\n1.1"), "{err}");
    let metrics = get(gateway.admin(), "admin", "/metrics").await.body;
    assert!(metrics.contains("sluice_tls_handshake_failures_total{listener=\"public\"} 2"), "{metrics}");
}

#[tokio::test]
async fn mutual_tls_demands_a_client_certificate_and_shows_its_subject_to_plugins() {
    let ca = Ca::new();
    let a = ca.issue("a", "a.test", &["a.test"]);
    let alice = ca.issue_with("alice", "alice", &[], |p| {
        p.distinguished_name.push(DnType::OrganizationName, "Example");
    });
    let stranger_ca = Ca::new();
    let mallory = stranger_ca.issue("mallory", "mallory", &[]);
    let backend = Backend::named("private").await;
    let client_ca = format!("client_ca = \"{}\"", ca.pem.display());
    let gateway = Gateway::start(&https_config(&pair(&a), &client_ca, &backend));

    let reply = rustls_get(gateway.addr(), "a.test", &ca, Some(&alice)).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "private"));
    assert_eq!(backend.last().headers["x-tls-client-subject"], "CN=alice, O=Example");

    let before = backend.seen().len();
    assert!(rustls_get(gateway.addr(), "a.test", &ca, None).await.is_err(), "no client certificate: refused");
    assert!(rustls_get(gateway.addr(), "a.test", &ca, Some(&mallory)).await.is_err(), "unknown issuer: refused");
    let (code, _, _) = curl_https(gateway.addr(), "a.test", &ca.pem, &[]).await;
    assert_ne!(code, 0, "curl without a client certificate is refused");
    let (key, cert) = (alice.key.display().to_string(), alice.cert.display().to_string());
    let (code, out, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--cert", &cert, "--key", &key]).await;
    assert_eq!((code, out.as_str()), (0, "private\n2"), "{err}");
    assert_eq!(backend.seen().len(), before + 1, "refused clients never reached the backend");
}

#[tokio::test]
async fn renewed_certificates_are_served_after_a_reload_and_broken_ones_keep_the_old() {
    let ca = Ca::new();
    let first = ca.issue_with("site", "a.test", &["a.test"], |p| {
        p.distinguished_name.push(DnType::OrganizationName, "First");
    });
    let backend = Backend::named("r").await;
    let config = https_config(&pair(&first), "", &backend);
    let gateway = Gateway::start(&config);
    let subject = |err: &str| err.lines().find(|l| l.contains("subject:")).unwrap_or_default().trim().to_string();
    let (code, _, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--verbose"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(subject(&err).contains("O=First"), "{err}");

    // Renewed in place (same file names), then a reload.
    ca.issue_with("site", "a.test", &["a.test"], |p| {
        p.distinguished_name.push(DnType::OrganizationName, "Second");
    });
    assert!(gateway.reload().await.status.is_success());
    let (code, _, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--verbose"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(subject(&err).contains("O=Second"), "{err}");

    // A key that does not match: the reload fails and the previous certificate keeps serving.
    let stray = ca.issue("stray", "x.test", &["x.test"]);
    std::fs::copy(&stray.key, ca.dir.0.join("site.key")).unwrap();
    let reply = gateway.reload().await;
    assert_eq!(reply.status.as_u16(), 422, "{}", reply.body);
    assert!(reply.body.contains("does not belong to the certificate"), "{}", reply.body);
    let (code, _, err) = curl_https(gateway.addr(), "a.test", &ca.pem, &["--verbose"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(subject(&err).contains("O=Second"), "{err}");
}

/// A backend that speaks HTTP/1.1 and HTTP/2 (by ALPN) over TLS with `cert`, and demands a client
/// certificate issued by `ca`. Answers `tls backend <version>`.
async fn tls_backend(cert: &Issued, ca: &Ca) -> SocketAddr {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider()).build().unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.private.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = format!("tls backend {:?}", req.version());
                    Ok::<_, std::convert::Infallible>(Response::new(full(body)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstreams_over_tls_verify_the_backend_against_a_private_ca() {
    let ca = Ca::new();
    let server = ca.issue("backend", "backend.test", &["backend.test"]);
    let client = ca.issue("gateway", "sluice-gateway", &[]);
    let backend = tls_backend(&server, &ca).await;
    let tls = |name: &str, with_client: bool| {
        let client = if with_client {
            format!(", cert = \"{}\", key = \"{}\"", client.cert.display(), client.key.display())
        } else {
            String::new()
        };
        format!("tls = {{ ca = \"{}\", server_name = \"{name}\"{client} }}", ca.pem.display())
    };
    let config = format!(
        "{LISTENER}\n\
         [[upstream]]\nname = \"good\"\nbackends = [\"{backend}\"]\n{}\n\n\
         [[upstream]]\nname = \"h2\"\nbackends = [\"{backend}\"]\nprotocol = \"http2\"\n{}\n\n\
         [[upstream]]\nname = \"wrong-name\"\nbackends = [\"{backend}\"]\n{}\n\n\
         [[upstream]]\nname = \"no-client-cert\"\nbackends = [\"{backend}\"]\n{}\n\n\
         [[route]]\nname = \"good\"\npath_prefix = \"/good\"\nupstream = \"good\"\n\n\
         [[route]]\nname = \"h2\"\npath_prefix = \"/h2\"\nupstream = \"h2\"\n\n\
         [[route]]\nname = \"wrong-name\"\npath_prefix = \"/wrong-name\"\nupstream = \"wrong-name\"\n\n\
         [[route]]\nname = \"no-client-cert\"\npath_prefix = \"/no-client-cert\"\nupstream = \"no-client-cert\"\n",
        tls("backend.test", true),
        tls("backend.test", true),
        tls("other.test", true),
        tls("backend.test", false),
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    let reply = client.get("a.test", "/good").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "tls backend HTTP/1.1"));
    let reply = client.get("a.test", "/h2").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "tls backend HTTP/2.0"));

    let reply = client.get("a.test", "/wrong-name").await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);
    let line = gateway.wait_for_log("route=\"wrong-name\"");
    assert!(line.contains("TLS handshake failed") && line.contains("not valid for name \"other.test\""), "{line}");

    let reply = client.get("a.test", "/no-client-cert").await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);

    // Verification is on unless turned off by its loud key, which is then logged at load.
    let skip = config.replace(
        &format!("ca = \"{}\", server_name = \"other.test\"", ca.pem.display()),
        "server_name = \"other.test\", danger_skip_verify = true",
    );
    gateway.write_config(&skip);
    assert!(gateway.reload().await.status.is_success());
    gateway.wait_for_log("danger_skip_verify = true: backend certificates are NOT verified");
    let reply = client.get("a.test", "/wrong-name").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "tls backend HTTP/1.1"));
}
