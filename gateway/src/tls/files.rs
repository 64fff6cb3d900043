//! Reading PEM certificates, keys and CA bundles, with errors that name the file and the problem.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::CertificateFiles;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Every certificate of a PEM file, in order; at least one.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate (expected a PEM `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// A parsed certificate, or why it cannot be parsed.
pub fn parse<'a>(der: &'a CertificateDer<'_>, path: &Path) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("the certificate {} cannot be parsed: {e}", path.display()))
}

/// A certificate chain and its key, checked: the certificate is valid now and the key is its own.
pub fn certified_key(files: &CertificateFiles) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain = certificates(&files.cert, "certificate")?;
    let leaf = parse(&chain[0], &files.cert)?;
    let validity = leaf.validity();
    if !validity.is_valid() {
        let now = x509_parser::time::ASN1Time::now();
        let problem = if now > validity.not_after {
            format!("expired on {}", validity.not_after)
        } else {
            format!("is not valid before {}", validity.not_before)
        };
        return Err(format!("the certificate {} {problem}: renew it", files.cert.display()));
    }
    let names = names(&leaf);
    let key_pem = read(&files.key, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "the private key {} cannot be read: {e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            files.key.display()
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the private key {} does not belong to the certificate {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!("the private key {} cannot be used: {e}", files.key.display()),
    })?;
    Ok((Arc::new(certified), names))
}

/// The DNS names a certificate is for: its subject alternative names, else its common name;
/// lower-cased.
fn names(cert: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let from_san: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !from_san.is_empty() {
        return from_san;
    }
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect()
}

/// The CA certificates of a PEM bundle, as trust roots.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "CA bundle")? {
        roots
            .add(cert)
            .map_err(|e| format!("the CA bundle {} holds a certificate that cannot be a root: {e}", path.display()))?;
    }
    Ok(roots)
}
