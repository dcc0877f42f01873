//! How the client reaches a node: plain HTTP on the loopback, HTTPS anywhere else.
//!
//! A node serves plain HTTP; off its host it sits behind a TLS-terminating proxy, and the client
//! speaks HTTPS to that proxy (rustls, through hyper-rustls). Which certificates it accepts:
//!
//! * by default, those that chain to the public web PKI (Mozilla's root list, compiled in by
//!   `webpki-roots`, so the CLI works the same in a minimal container without a system CA
//!   bundle);
//! * with `--ca-file`, those that chain to the CA certificates in that PEM file *instead* (as
//!   curl's `--cacert`): a private CA, and nothing else.
//!
//! An `https://` client never falls back to plain HTTP. The CLI also refuses `http://` to any
//! host that is not the loopback ([`check_cleartext`]): the bearer token and customers' personal
//! data would cross the network readable by anyone on the path. `--insecure-http` says the
//! network is trusted (a private lab network, a VPN).
//!
//! Deliberately not done: client certificates (the node API authenticates with bearer tokens),
//! certificate pinning, and reading the operating system's trust store.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::ClientError;

/// The connector of a client for `base` (already normalized: `http://…` or `https://…`): HTTPS
/// only for an `https://` base, trusting `ca_file`'s CAs when given, else the public roots.
pub fn connector(
    base: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    http.enforce_http(false);
    let schemes = HttpsConnectorBuilder::new().with_tls_config(tls_config(ca_file)?);
    let builder = if base.starts_with("https://") {
        schemes.https_only()
    } else {
        schemes.https_or_http()
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// The rustls client configuration: safe default protocol versions, server certificates
/// checked against `ca_file`'s CAs, or the public roots.
fn tls_config(ca_file: Option<&Path>) -> Result<ClientConfig, ClientError> {
    let roots = match ca_file {
        Some(path) => private_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    Ok(
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Local(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The CA certificates of a PEM file; an unreadable file, or one without a certificate, is
/// an error naming the file.
fn private_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let bad = |why: String| ClientError::Local(format!("--ca-file {}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// Refuses a plain `http://` base whose host is not the loopback, unless `insecure_http`:
/// the bearer token and the customers' data would travel in cleartext. Checked before any
/// connection is made.
pub fn check_cleartext(base: &str, insecure_http: bool) -> Result<(), ClientError> {
    if insecure_http || !base.starts_with("http://") {
        return Ok(());
    }
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url(base.into(), e.to_string()))?;
    let host = uri.host().unwrap_or_default();
    if is_loopback(host) {
        return Ok(());
    }
    Err(ClientError::Url(
        base.into(),
        format!(
            "refusing plain http:// to {host}, which is not this host's loopback: the API token \
             and customer data would cross the network in cleartext. Use https:// (a TLS proxy \
             in front of the node; --ca-file for a private CA), or pass --insecure-http (or set \
             CUSTOMER_CLUSTER_INSECURE_HTTP=1) on a network you trust"
        ),
    ))
}

/// `localhost`, or a loopback IP address (`127.0.0.0/8`, `::1`; IPv6 in URL brackets too).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_allowed_only_to_the_loopback_unless_insecure_http() {
        for ok in [
            "http://127.0.0.1:8081",
            "http://127.3.2.1:1",
            "http://localhost:8081",
            "http://LOCALHOST",
            "http://[::1]:8081",
            "https://10.0.0.1:8443",
            "https://node.example",
        ] {
            assert!(check_cleartext(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:8081",
            "http://node.example:8081",
            "http://[2001:db8::1]:80",
            "http://0.0.0.0:8081",
            "http://localhost.example.com",
        ] {
            let err = check_cleartext(refused, false).unwrap_err().to_string();
            assert!(err.contains("--insecure-http"), "{refused}: {err}");
            assert!(err.contains("cleartext"), "{refused}: {err}");
            assert!(check_cleartext(refused, true).is_ok(), "{refused}");
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = connector("https://h:1", Some(&empty), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--ca-file") && err.contains("empty.pem"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = connector("https://h:1", Some(&missing), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
