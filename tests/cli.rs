//! The binary's command line: generated completions and man page, what the CLI does when its
//! reader goes away early, flags that must accept what people paste, how it prints what a node
//! sends, and how it reaches a node: over HTTPS through a TLS proxy, never over plain HTTP off
//! the loopback unless told to.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::BIN;

/// Runs the binary with stdout connected to a pipe whose reader has already gone away, as
/// after `customer-cluster … | head` read what it wanted.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_are_printed_for_each_shell_and_name_every_subcommand() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "{bash}");
    for sub in [
        "node",
        "create",
        "update",
        "import",
        "status",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "no {sub} in the bash completion");
    }
    assert!(stdout_of(&["completions", "zsh"]).starts_with("#compdef customer-cluster"));
    assert!(stdout_of(&["completions", "fish"]).contains("complete -c customer-cluster"));
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn the_man_page_is_printed_as_roff() {
    let page = stdout_of(&["man"]);
    assert!(page.contains("\n.TH customer-cluster 1 "), "{page}");
    assert!(
        page.contains("\n.SH NAME\ncustomer\\-cluster \\- "),
        "{page}"
    );
    assert!(page.contains("customer\\-cluster\\-import(1)"), "{page}");
}

#[test]
fn output_into_a_pipe_closed_early_ends_quietly_with_exit_code_0() {
    for args in [&["completions", "bash"][..], &["man"], &["--help"]] {
        let out = run_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn if_match_takes_the_etag_as_the_node_sends_it() {
    let node = format!("127.0.0.1:{}", support::free_port());
    for tag in ["2", "\"2\"", "W/\"2\""] {
        let out = Command::new(BIN)
            .args([
                "update",
                "x",
                "--name",
                "A",
                "--if-match",
                tag,
                "--node",
                &node,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Parsed, so it got as far as trying the (absent) node.
        assert!(stderr.contains("cannot reach node"), "{tag}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["delete", "x", "--if-match", "two", "--node", &node])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("like 2 or the ETag \"2\""), "{stderr}");
}

#[test]
fn a_cli_pointed_at_a_node_gets_no_hint_about_run_env() {
    let node = format!("127.0.0.1:{}", support::free_port());
    let out = Command::new(BIN)
        .args(["status", "--node", &node])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach node"), "{stderr}");
    assert!(!stderr.contains("hint:"), "{stderr}");
}

#[test]
fn plain_http_to_a_host_off_the_loopback_is_refused_before_connecting() {
    // Documentation addresses (RFC 5737, RFC 3849, RFC 2606): even a client that wrongly
    // connected would reach nobody.
    for node in [
        "http://192.0.2.1:8081",
        "192.0.2.1:8081",
        "http://[2001:db8::1]:8081",
        "http://node.example:80",
    ] {
        let out = Command::new(BIN)
            .args(["status", "--node", node])
            .env_remove("CUSTOMER_CLUSTER_INSECURE_HTTP")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{node}: {stderr}");
        assert!(
            stderr.contains("refusing plain http://") && stderr.contains("--insecure-http"),
            "{node}: {stderr}"
        );
        // Refused from the URL alone: no connection was tried.
        assert!(!stderr.contains("cannot reach node"), "{node}: {stderr}");
        assert!(!stderr.contains("did not answer"), "{node}: {stderr}");
    }
}

/// A node's HTTP answer to every request on a port of its own: `body` as JSON, served to each
/// connection until the test ends (a stand-in for a node that sends hostile data, which a
/// real node would refuse to store).
fn serve_json(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn control_and_bidi_characters_from_a_node_are_printed_escaped() {
    let name = "\u{1b}]0;pwned\u{7}\u{1b}[31mAlice\u{202E}cba\u{9b}2J";
    let customer = serde_json::json!({
        "id": "01900000-0000-7000-8000-000000000000",
        "name": name,
        "email": "not-an-email",
        "phone": "\u{1b}[2J",
        "address": null,
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    });
    let node = serve_json(customer.to_string());
    let get = |json: bool| {
        let mut args = vec![
            "get",
            "01900000-0000-7000-8000-000000000000",
            "--node",
            &node,
        ];
        if json {
            args.push("--json");
        }
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let human = get(false);
    for raw in ['\u{1b}', '\u{7}', '\u{202E}', '\u{9b}'] {
        assert!(!human.contains(raw), "raw {raw:?} in {human:?}");
    }
    assert!(
        human.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[31mAlice\\u{202e}cba\\u{9b}2J"),
        "{human}"
    );
    assert!(human.contains("phone:      \\u{1b}[2J"), "{human}");
    let json = get(true);
    for raw in ['\u{1b}', '\u{7}', '\u{202E}', '\u{9b}'] {
        assert!(!json.contains(raw), "raw {raw:?} in {json:?}");
    }
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["name"], name, "the JSON value is unchanged");
}

/// A throwaway CA and a server certificate from it for `127.0.0.1` and `localhost`: the CA's
/// PEM, and the rustls server configuration presenting the certificate.
fn throwaway_ca() -> (String, tokio_rustls::rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test proxy CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_pem, config)
}

/// A TLS-terminating proxy on a free loopback port in front of `upstream` (`host:port`), as
/// an operator puts one in front of a node; runs until the test's runtime ends. Its port.
async fn tls_proxy(config: tokio_rustls::rustls::ServerConfig, upstream: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut node) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut node).await;
                }
            });
        }
    });
    port
}

/// Runs the CLI with `args`, without the environment's node, token or TLS settings.
async fn cli(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    for var in [
        "CUSTOMER_CLUSTER_NODE",
        "CUSTOMER_CLUSTER_TOKEN",
        "CUSTOMER_CLUSTER_TOKEN_FILE",
        "CUSTOMER_CLUSTER_CA_FILE",
        "CUSTOMER_CLUSTER_INSECURE_HTTP",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).kill_on_drop(true).output().await.unwrap()
}

#[tokio::test]
async fn the_cli_reaches_a_node_over_https_trusting_a_private_ca_given_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = "https-test-token-0123456789";
    let mut spec = support::NodeSpec::new("h1");
    spec.db_path = Some(dir.path().join("c.db"));
    spec.extra = vec!["--api-token".into(), token.into()];
    let node = support::TestNode::start(spec, dir.path());
    node.wait_ready(Duration::from_secs(60)).await;
    let (ca_pem, server) = throwaway_ca();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = tls_proxy(server, format!("127.0.0.1:{}", node.spec.http_port)).await;
    let (ca, tokens) = (ca_file.to_str().unwrap(), token_file.to_str().unwrap());

    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}");
        let email = format!("tls@{host}.example");
        let created = cli(&[
            "create",
            "--name",
            "Tess",
            "--email",
            &email,
            "--node",
            &url,
            "--ca-file",
            ca,
            "--token-file",
            tokens,
            "--json",
        ])
        .await;
        let stderr = String::from_utf8_lossy(&created.stderr);
        assert!(created.status.success(), "{url}: {stderr}");
        let id = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = cli(&[
            "get",
            &id,
            "--node",
            &url,
            "--ca-file",
            ca,
            "--token-file",
            tokens,
        ])
        .await;
        let stdout = String::from_utf8_lossy(&got.stdout);
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert!(stdout.contains(&email), "{stdout}");
    }

    let url = format!("https://localhost:{port}");
    // Without the private CA the proxy's certificate is not trusted: no request is sent.
    let untrusted = cli(&["status", "--node", &url, "--token-file", tokens]).await;
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // The token file is what authenticates: without it, the node refuses.
    let anonymous = cli(&["status", "--node", &url, "--ca-file", ca]).await;
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert_eq!(anonymous.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    // The node got its cookie and token as arguments, and said so at start.
    let log = node.log();
    for flag in ["--cookie", "--api-token"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains(&format!("{flag} was given on the command line"))),
            "no warning about {flag}:\n{log}"
        );
    }
}
