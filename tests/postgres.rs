//! The PostgreSQL engine against a server that goes away and comes back.
//!
//! The test starts a private server with `scripts/pg.sh` (its own run directory and port, so
//! it never disturbs the server other tests share), opens an [`Engine`] over it, stops the
//! server, and checks that requests answer `Unavailable` within their deadline; then it starts
//! the server again and checks that the same engine serves again without being reopened.
//!
//! Runs when `CC_TEST_DATABASE_URL` is set (the sign that PostgreSQL tests are wanted and
//! server binaries exist, as `.ci/run` arranges); otherwise it says SKIPPED, except under
//! `CI=true`, where it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use customer_cluster::config::Secret;
use customer_cluster::customer::{Customer, CustomerFields, new_customer_id};
use customer_cluster::error::Error;
use customer_cluster::storage::WriteOp;
use customer_cluster::storage::engine::{Backend, Engine, EngineConfig, ReadJob};
use customer_cluster::storage::postgres::PostgresConfig;

fn wanted(test: &str) -> bool {
    if std::env::var("CC_TEST_DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CC_TEST_DATABASE_URL is not set but CI=true: PostgreSQL tests must run in CI"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: PostgreSQL test without a server; run `export CC_TEST_DATABASE_URL=$(scripts/pg.sh up)`"
    );
    false
}

/// A private server in its own run directory; destroyed on every path.
struct PrivateServer {
    run_dir: tempfile::TempDir,
}

impl PrivateServer {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh")
    }

    fn pg(&self, cmd: &str) -> String {
        let out = Command::new("bash")
            .arg(Self::script())
            .arg(cmd)
            .env("CC_RUN_DIR", self.run_dir.path())
            .output()
            .expect("pg.sh runs");
        assert!(
            out.status.success(),
            "pg.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    fn start() -> (Self, String) {
        let run_dir = tempfile::tempdir().expect("temp dir");
        let server = Self { run_dir };
        let url = server.pg("up");
        (server, url)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("destroy")
            .env("CC_RUN_DIR", self.run_dir.path())
            .output();
    }
}

fn customer(email: &str) -> Customer {
    Customer::new(
        new_customer_id(),
        CustomerFields {
            name: "A".into(),
            email: email.into(),
            phone: None,
            address: None,
        },
        1,
    )
}

fn insert(engine: &Engine, c: &Customer) -> Result<Option<Customer>, Error> {
    let (tx, rx) = mpsc::channel();
    engine.write(
        WriteOp::Insert(c.clone()),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the engine answers")
}

fn get(engine: &Engine, c: &Customer) -> Result<Option<Customer>, Error> {
    let (tx, rx) = mpsc::channel();
    engine.read(ReadJob::Get(
        c.id,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    ));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the engine answers")
}

fn ping(engine: &Engine) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel();
    engine.read(ReadJob::Ping(Box::new(move |r| {
        let _ = tx.send(r);
    })));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the engine answers")
}

#[test]
fn a_stopped_server_answers_unavailable_in_time_and_service_resumes_after_restart() {
    if !wanted("a_stopped_server_answers_unavailable_in_time_and_service_resumes_after_restart") {
        return;
    }
    let (server, url) = PrivateServer::start();
    let config = PostgresConfig {
        op_timeout: Duration::from_millis(2000),
        ..PostgresConfig::new(Secret::new(url))
    };
    let engine = Engine::open(&EngineConfig {
        backend: Backend::Postgres(config),
        max_batch: 16,
        max_queued_writes: customer_cluster::storage::engine::DEFAULT_MAX_QUEUED_WRITES,
        readers: 1,
        prune: None,
    })
    .expect("engine opens");
    let before = customer("before@x.io");
    assert_eq!(insert(&engine, &before), Ok(Some(before.clone())));
    assert_eq!(ping(&engine), Ok(()), "a ping of a running server");

    server.pg("down");
    let during = customer("during@x.io");
    for attempt in 0..3 {
        let started = Instant::now();
        let write = insert(&engine, &during);
        assert!(
            matches!(write, Err(Error::Unavailable(_))),
            "write {attempt} while down: {write:?}"
        );
        let read = get(&engine, &before);
        assert!(
            matches!(read, Err(Error::Unavailable(_))),
            "read {attempt} while down: {read:?}"
        );
        let pinged = ping(&engine);
        assert!(
            matches!(pinged, Err(Error::Unavailable(_))),
            "ping {attempt} while down: {pinged:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(4500),
            "answers took {:?}, longer than two operation deadlines",
            started.elapsed()
        );
    }

    server.pg("up");
    // The same engine, never reopened: the pool reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&engine, &before) {
            Ok(found) => {
                assert_eq!(
                    found,
                    Some(before.clone()),
                    "the acknowledged write survived"
                );
                break;
            }
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("service did not resume: {e:?}"),
        }
    }
    assert_eq!(insert(&engine, &during), Ok(Some(during.clone())));
    assert_eq!(get(&engine, &during), Ok(Some(during)));
    assert_eq!(ping(&engine), Ok(()), "a ping after the restart");
    engine.shutdown();
}

/// Connects with `url` and returns the server's answer to `sql` (first column of the first
/// row, as text), or the connection or query error as text.
fn query_one(url: &str, sql: &str) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let task = tokio::spawn(connection);
            let answer = client
                .query_one(sql, &[])
                .await
                .map(|row| row.get::<_, String>(0))
                .map_err(|e| format!("query: {e:?}"));
            drop(client);
            let _ = task.await;
            answer
        })
}

#[test]
fn pg_sh_gives_a_password_protected_role_that_is_no_superuser() {
    if !wanted("pg_sh_gives_a_password_protected_role_that_is_no_superuser") {
        return;
    }
    let (server, url) = PrivateServer::start();
    let (userinfo, host) = url
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split_once('@'))
        .expect("pg.sh prints postgres://user:password@host…");
    let (user, password) = userinfo.split_once(':').expect("the URL has a password");
    assert_eq!(user, "cc");
    assert!(password.len() >= 32, "a generated password: {password}");

    let password_file = server.run_dir.path().join("pg-password");
    let mode = std::fs::metadata(&password_file)
        .expect("pg.sh keeps the password in run/pg-password")
        .permissions();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.mode() & 0o777, 0o600, "pg-password is owner-only");

    assert_eq!(
        query_one(
            &url,
            "SELECT rolsuper::text || ',' || rolcreatedb::text FROM pg_roles WHERE rolname = current_user"
        ),
        Ok("false,true".into()),
        "cc may create the tests' databases but is no superuser"
    );
    let program = query_one(&url, "COPY (SELECT 1) TO PROGRAM 'true'");
    assert!(
        program.as_ref().is_err_and(|e| e.contains("superuser")),
        "cc must not run programs on the host: {program:?}"
    );

    // Without the password, with a wrong one, and as the superuser over TCP: refused.
    let without = format!("postgres://cc@{host}");
    let wrong = format!("postgres://cc:{}@{host}", "0".repeat(password.len()));
    let superuser = format!("postgres://postgres@{host}");
    let superuser_guess = format!("postgres://postgres:postgres@{host}");
    for refused in [&without, &wrong, &superuser, &superuser_guess] {
        let answer = query_one(refused, "SELECT current_user::text");
        assert!(answer.is_err(), "{refused} was let in: {answer:?}");
    }
    let wrong_answer = query_one(&wrong, "SELECT 1::text").unwrap_err();
    assert!(
        wrong_answer.contains("28P01") || wrong_answer.contains("password authentication failed"),
        "a wrong password is refused by the server: {wrong_answer}"
    );
}
