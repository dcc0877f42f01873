//! PostgreSQL for multi-process tests: a throwaway server a test owns (and may stop, restart
//! or kill), and a fresh database per test on whichever server is at hand.
//!
//! ```text
//!  PgServer::start ── initdb + pg_ctl start ──▶ temp dir, free port on 127.0.0.1, own socket dir
//!        │ stop / start / kill (the fault)         run as `postgres` when the test runs as root
//!        └─ Drop: pg_ctl stop -m immediate, temp dir removed
//!  TestDatabase::create(admin url) ── CREATE DATABASE cc_test_<random> ──▶ url()
//!        └─ Drop: DROP DATABASE … WITH (FORCE)
//! ```
//!
//! Binaries are found as `scripts/pg.sh` finds them (`/usr/lib/postgresql/*/bin`,
//! `pg_config --bindir`, `PATH`). When none are found, or `CC_TEST_DATABASE_URL` is needed
//! and unset, [`skip`] prints a loud SKIPPED line — or fails the test under `CI=true`, where
//! `.ci/run` provides both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port;

/// Says why a PostgreSQL test cannot run: a panic under `CI=true` (the tests must run there),
/// else a SKIPPED line on stderr.
pub fn skip(test: &str, why: &str) {
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "{test}: {why}, but CI=true: the PostgreSQL tests must run in CI"
    );
    eprintln!(
        "\n!!!!! SKIPPED {test}: {why}.\n!!!!! Install PostgreSQL server binaries \
         (apt-get install postgresql) or export CC_TEST_DATABASE_URL=$(scripts/pg.sh up)\n"
    );
}

/// The directory holding `initdb` and `pg_ctl`, searched as `scripts/pg.sh` does.
pub fn bindir() -> Option<PathBuf> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| usable(d))
        .collect();
    versioned.sort();
    if let Some(d) = versioned.pop() {
        return Some(d);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    from_pg_config
        .into_iter()
        .chain(on_path)
        .find(|d| usable(d))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A private PostgreSQL server in a temp dir, listening on 127.0.0.1 only; stopped
/// (immediate) and deleted when dropped.
pub struct PgServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// initdb and start a server; `None` when no server binaries are installed.
    pub fn start() -> Option<Self> {
        let bin = bindir()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Self {
            bin,
            port: free_port(),
            dir,
        };
        std::fs::create_dir(server.sock()).expect("socket dir");
        if is_root() {
            server.chown_to_postgres();
        }
        let data = server.data();
        let initdb = server.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(initdb.status.success(), "initdb failed: {}", text(&initdb));
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn chown_to_postgres(&self) {
        let out = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(self.dir.path())
            .output()
            .expect("chown runs");
        assert!(
            out.status.success(),
            "running as root needs a `postgres` user to own the server: {}",
            text(&out)
        );
    }

    /// Runs a server binary, as `postgres` when we are root (initdb and postgres refuse root).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.args(args).output().expect("server binary runs")
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["-D", data.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Starts the (stopped) server on its port and waits until it accepts connections.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.sock().display()
        );
        let log = log.to_str().expect("utf-8 path").to_owned();
        let out = self.pg_ctl(&["-l", &log, "-w", "-t", "30", "-o", &options, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server cleanly (`-m fast`: clients are disconnected, data is kept).
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    /// Kills the server (`-m immediate`: every server process quits at once, no checkpoint).
    pub fn kill(&self) {
        let out = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl kill failed: {}", text(&out));
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A database of its own for one test, created on a server through an admin URL and dropped
/// (connections and all) when this is dropped.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// `CREATE DATABASE` with a random name on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("cc_test_{}", uuid::Uuid::now_v7().simple());
        execute(admin_url, &format!("CREATE DATABASE {name}")).await;
        let url = with_database(admin_url, &name);
        Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        }
    }

    /// The URL nodes are given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    /// Drops the database from a thread of its own (Drop cannot await on the test's runtime).
    fn drop(&mut self) {
        let (admin, sql) = (
            self.admin_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(execute(&admin, &sql));
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Runs one statement over a connection of its own.
async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
    let task = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

/// `url` with its database (the path) replaced by `db`, query string kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_at..]
        .find('/')
        .map_or(base.len(), |i| authority_at + i);
    format!("{}/{db}{query}", &base[..host_end])
}

/// A fresh database for `test` on the server of `CC_TEST_DATABASE_URL`, else on a private server
/// started here (returned beside it, so the database is dropped first and the server after);
/// `None` after [`skip`] said why the test cannot run.
pub async fn test_database(test: &str) -> Option<(TestDatabase, Option<PgServer>)> {
    let mut private = None;
    let admin_url = match std::env::var("CC_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => match PgServer::start() {
            Some(server) => private.insert(server).url("postgres"),
            None => {
                skip(
                    test,
                    "no CC_TEST_DATABASE_URL and no PostgreSQL server binaries",
                );
                return None;
            }
        },
    };
    Some((TestDatabase::create(&admin_url).await, private))
}
