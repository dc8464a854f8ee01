//! Optional TLS (rustls, ring provider) for the same protocol v1 byte stream:
//! the server's acceptor from a certificate chain and key in PEM files, and the
//! client's connector from a CA certificate in a PEM file.
//!
//! This module must never log key material, and never offer a mode that skips
//! certificate verification.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::client::ClientTls;

/// Builds the server's TLS acceptor from PEM files. The error names the file
/// and what is wrong with it.
pub fn server_acceptor(cert_pem: &Path, key_pem: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| format!("{}: cannot read certificates: {e}", cert_pem.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad certificate: {e}", cert_pem.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert_pem.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .map_err(|e| format!("{}: cannot read a private key: {e}", key_pem.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Builds a client connector that trusts the CA certificates in
/// `tls.ca_cert_pem`, and the server name to verify.
pub fn client_connector(tls: &ClientTls) -> Result<(TlsConnector, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&tls.ca_cert_pem).map_err(|e| {
        format!(
            "{}: cannot read certificates: {e}",
            tls.ca_cert_pem.display()
        )
    })?;
    for c in certs {
        let c = c.map_err(|e| format!("{}: bad certificate: {e}", tls.ca_cert_pem.display()))?;
        roots.add(c).map_err(|e| {
            format!(
                "{}: unusable CA certificate: {e}",
                tls.ca_cert_pem.display()
            )
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("TLS server name {:?}: {e}", tls.server_name))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
