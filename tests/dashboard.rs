//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`) against a 3-node cluster. It loads `/dashboard` from one
//! node, types the token once, sees three members and a full 1024-cell shard map, then a node
//! is killed and the cells it owned go to the other two. A screenshot is saved as
//! `target/tmp/dashboard.png`.
//!
//! Without chromium or chromedriver on the machine the test says so loudly and passes, except
//! under `CI=true`, where it fails (`.ci/run` installs both).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{ChildGuard, TestCluster, free_port, wait_until};

const TOKEN: &str = "dashboard-test-token";

/// `name` on `PATH`, if present.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` after saying why (a failure under `CI=true`).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let browser = on_path("chromium").or_else(|| on_path("chromium-browser"));
    let driver = on_path("chromedriver");
    if let (Some(b), Some(d)) = (&browser, &driver) {
        return Some((b.clone(), d.clone()));
    }
    let message = "chromium and chromedriver are needed for the dashboard browser test \
        (apt-get install -y chromium chromium-driver)";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{message}: missing under CI=true"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
    // test, and this must be seen.
    let banner = "!".repeat(76);
    let _ = writeln!(
        std::io::stderr(),
        "\n{banner}\n!!! SKIPPED: {message}\n{banner}\n"
    );
    None
}

/// Starts chromedriver on a free loopback port and waits until it accepts connections.
async fn start_driver(driver: &Path) -> (ChildGuard, String) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let guard = ChildGuard(child);
    wait_until(
        "chromedriver listening",
        Duration::from_secs(20),
        || async { TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()) },
    )
    .await;
    (guard, format!("http://127.0.0.1:{port}"))
}

async fn open_browser(driver_url: &str, chromium: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver_url)
        .await
        .expect("a chromium session")
}

/// Runs `script` in the page and returns its value.
async fn eval(browser: &Client, script: &str) -> Value {
    browser.execute(script, vec![]).await.expect("script runs")
}

/// Members in the table as `[name, status]`, and the owners of the rendered cells.
const MEMBERS_JS: &str = "return [...document.querySelectorAll('#members tr.member')]\
    .map(r => [r.dataset.name, r.dataset.status]);";
const OWNERS_JS: &str = "return [...document.querySelectorAll('#shard-map .cell')]\
    .map(c => c.dataset.owner || '');";

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_three_members_and_moves_a_killed_nodes_cells() {
    let Some((chromium, driver)) = browser_tools() else {
        return;
    };
    let mut cluster = TestCluster::start("dash", 3, &["--api-token", TOKEN]).await;
    let (_driver, driver_url) = start_driver(&driver).await;
    let browser = open_browser(&driver_url, &chromium).await;
    let outcome = drive(&browser, &mut cluster).await;
    let shot = browser.screenshot().await;
    let _ = browser.close().await;
    save_screenshot(shot.ok());
    outcome.unwrap_or_else(|e| panic!("{e}"));
}

/// The scenario itself, so the browser is closed whatever happens.
async fn drive(browser: &Client, cluster: &mut TestCluster) -> Result<(), String> {
    let n1 = format!("http://127.0.0.1:{}", cluster.nodes[0].spec.http_port);
    browser
        .goto(&format!("{n1}/dashboard"))
        .await
        .map_err(|e| format!("load the dashboard: {e}"))?;
    let token = browser
        .find(Locator::Id("token"))
        .await
        .map_err(|e| e.to_string())?;
    token.send_keys(TOKEN).await.map_err(|e| e.to_string())?;
    let connect = browser
        .find(Locator::Id("connect"))
        .await
        .map_err(|e| e.to_string())?;
    connect.click().await.map_err(|e| e.to_string())?;
    let kept = eval(
        browser,
        "return sessionStorage.getItem('customer-cluster-token');",
    )
    .await;
    assert_eq!(kept, TOKEN, "the token is kept in sessionStorage");

    let names = ["dash1", "dash2", "dash3"];
    wait_until(
        "three members up and 1024 cells",
        Duration::from_secs(20),
        || async {
            let members = eval(browser, MEMBERS_JS).await;
            let up = members.as_array()?.iter().filter(|m| m[1] == "up").count();
            let owners = strings(&eval(browser, OWNERS_JS).await);
            let all_owned =
                owners.len() == 1024 && owners.iter().all(|o| names.contains(&o.as_str()));
            (up == 3 && all_owned && names.iter().all(|n| owners.iter().any(|o| o == n)))
                .then_some(())
        },
    )
    .await;
    // Every member's request rate is read: the page may connect to the members' /metrics
    // (its policy names them) and they grant this origin a cross-origin read.
    wait_until(
        "a request rate for every member",
        Duration::from_secs(20),
        || async {
            let rates = strings(
                &eval(
                    browser,
                    "return [...document.querySelectorAll('#members tr.member')]\
                        .map(r => r.children[7].textContent);",
                )
                .await,
            );
            (rates.len() == 3 && rates.iter().all(|r| r.parse::<f64>().is_ok())).then_some(())
        },
    )
    .await;
    wait_until(
        "the event timeline shows events",
        Duration::from_secs(10),
        || async {
            let n = eval(
                browser,
                "return document.querySelectorAll('#events li').length;",
            )
            .await;
            (n.as_u64()? > 0).then_some(())
        },
    )
    .await;

    cluster.nodes[2].kill();
    wait_until(
        "dash3's cells moved to dash1 and dash2",
        Duration::from_secs(20),
        || async {
            let owners = strings(&eval(browser, OWNERS_JS).await);
            let moved = owners.len() == 1024 && owners.iter().all(|o| o == "dash1" || o == "dash2");
            moved.then_some(())
        },
    )
    .await;
    wait_until("two members listed", Duration::from_secs(10), || async {
        let members = eval(browser, MEMBERS_JS).await;
        (members.as_array()?.len() == 2).then_some(())
    })
    .await;
    wait_until(
        "the timeline names dash3",
        Duration::from_secs(10),
        || async {
            let text = eval(
                browser,
                "return document.getElementById('events').innerText;",
            )
            .await;
            text.as_str()?.contains("dash3").then_some(())
        },
    )
    .await;
    Ok(())
}

fn save_screenshot(png: Option<Vec<u8>>) {
    let Some(png) = png else {
        eprintln!("no screenshot: the browser did not give one");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("dashboard.png"), &png));
    match saved {
        Ok(()) => eprintln!("screenshot: {}", dir.join("dashboard.png").display()),
        Err(e) => eprintln!("cannot save the screenshot: {e}"),
    }
}
