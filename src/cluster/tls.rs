//! Inter-node TLS: mutual authentication with certificates from one CA, on top of the cookie.
//!
//! Every node presents its certificate (`--tls-cert`, `--tls-key`) and accepts only peers
//! whose certificate chains to `--tls-ca`, in both directions: a process without such a
//! certificate cannot complete a connection, so it never reaches the cookie handshake and
//! never joins. Peers are dialed by the host in their advertised address, which must be in
//! their certificate's subject alternative names (IP or DNS).
//!
//! Not done here: certificate reloading (restart the node to rotate) and revocation lists.

use std::path::Path;
use std::sync::Arc;

use ractor_cluster::IncomingEncryptionMode;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::mesh::Transport;
use crate::config::TlsPaths;
use crate::error::{Error, Result};

/// Loads the PEM files and builds the inbound (acceptor) and outbound (connector) sides.
pub fn load(paths: &TlsPaths) -> Result<(IncomingEncryptionMode, Transport)> {
    let provider: Arc<CryptoProvider> = Arc::new(aws_lc_rs::default_provider());
    let chain = certs(&paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| invalid(&paths.key, "private key", e))?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&paths.ca)? {
        roots
            .add(ca)
            .map_err(|e| invalid(&paths.ca, "CA certificate", e))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid(&paths.ca, "CA bundle", e))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&paths.cert, "certificate/key pair", e))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(&paths.cert, "certificate/key pair", e))?;
    Ok((
        IncomingEncryptionMode::Tls(TlsAcceptor::from(Arc::new(server))),
        Transport::Tls {
            connector: TlsConnector::from(Arc::new(client)),
        },
    ))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(path, "certificate", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn invalid(path: &Path, what: &str, err: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("TLS {what} in {}: {err}", path.display()))
}
