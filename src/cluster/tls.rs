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
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::mesh::Transport;
use crate::config::TlsPaths;
use crate::error::{Error, Result};

/// Loads the PEM files and builds the inbound (acceptor) and outbound (connector) sides;
/// refuses a certificate that does not carry `name` (this node's `--name`) as a DNS name.
pub fn load(paths: &TlsPaths, name: &str) -> Result<(TlsAcceptor, Transport)> {
    let provider: Arc<CryptoProvider> = Arc::new(aws_lc_rs::default_provider());
    let chain = certs(&paths.cert)?;
    check_name(&chain[0], name).map_err(|certified| {
        invalid(
            &paths.cert,
            "certificate",
            format!(
                "it does not carry this node's name {name:?} as a DNS subject alternative name (it carries: {}); peers would refuse it",
                if certified.is_empty() { "no DNS name".to_owned() } else { certified.join(", ") }
            ),
        )
    })?;
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
        TlsAcceptor::from(Arc::new(server)),
        Transport::Tls {
            connector: TlsConnector::from(Arc::new(client)),
        },
    ))
}

/// `Ok` when `cert` carries the node name `name` as a DNS subject alternative name; otherwise
/// the DNS names it does carry. A name that is not a valid DNS name is carried by no
/// certificate.
pub fn check_name(cert: &CertificateDer<'_>, name: &str) -> std::result::Result<(), Vec<String>> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Err(Vec::new());
    };
    let carried = ServerName::try_from(name)
        .ok()
        .filter(|n| matches!(n, ServerName::DnsName(_)))
        .is_some_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok());
    if carried {
        Ok(())
    } else {
        Err(ee.valid_dns_names().map(str::to_owned).collect())
    }
}

/// The encryption mode of ractor_cluster's own listener, which `cluster::gate` replaces: a TLS
/// acceptor without a certificate, so every handshake there fails and no session ever starts
/// through it (the NodeServer always binds a listener; this one only listens on loopback).
pub fn closed_listener() -> Result<IncomingEncryptionMode> {
    #[derive(Debug)]
    struct NoCertificate;
    impl ResolvesServerCert for NoCertificate {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(IncomingEncryptionMode::Tls(TlsAcceptor::from(Arc::new(
        config,
    ))))
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
