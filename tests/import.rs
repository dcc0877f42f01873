//! Bulk import against a real node: valid rows are created once (also on a re-run), rejected
//! rows are reported with reasons and never written.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{BIN, NodeSpec, TestNode};

async fn emails(node: &TestNode) -> Vec<String> {
    let mut out: Vec<String> = node
        .list_all()
        .await
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn import(node: &TestNode, file: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("import")
        .arg(file)
        .args(["--node", &format!("127.0.0.1:{}", node.spec.http_port)])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn csv_and_jsonl_imports_create_valid_rows_once_and_reject_the_rest_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = NodeSpec::new("importer");
    spec.db_path = Some(dir.path().join("i.db"));
    let node = TestNode::start(spec, dir.path());
    node.wait_ready(Duration::from_secs(30)).await;

    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "name,email,phone,address\n\
         Ada Lovelace,ada@example.com,+44 20 7946 0000,\"12 St James's Square, London\"\n\
         Alan Turing,alan@example.com,,\n\
         No Email,not-an-email,,\n\
         ,nameless@example.com,,\n\
         Ada Again,ADA@example.com,,\n\
         \"Zoë \"\"Z\"\" Ünïcode\",zoe@example.com,,Zürich\n\
         Too,Many,Fields,Here,Extra\n",
    )
    .unwrap();
    let rejects = dir.path().join("rejects.csv");
    let (ok, out) = import(&node, &csv, &["--rejects", rejects.to_str().unwrap()]);
    assert!(
        !ok,
        "rejected rows must make the import exit non-zero: {out}"
    );
    assert!(out.contains("created 3 row(s)"), "{out}");
    assert!(out.contains("rejected 4 row(s)"), "{out}");
    assert!(out.contains("already used on line 2"), "{out}");
    assert_eq!(
        emails(&node).await,
        vec!["ada@example.com", "alan@example.com", "zoe@example.com"]
    );
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(rejected.lines().count(), 5, "{rejected}");
    // The screen lists the rejected rows in the order of the file, as --rejects does.
    let file_lines: Vec<String> = rejected
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    let screen_lines: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("line "))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(screen_lines, file_lines, "{out}");
    let mut sorted = screen_lines.clone();
    sorted.sort_by_key(|l| l.parse::<u64>().unwrap());
    assert_eq!(screen_lines, sorted, "{out}");

    // Running the same import again writes nothing new, and says so.
    let (_, out) = import(&node, &csv, &[]);
    assert!(
        out.contains("created 0 row(s), 3 already present from an earlier run"),
        "{out}"
    );
    assert_eq!(emails(&node).await.len(), 3);

    // --json: one object a script can read, the same counts and every rejected row.
    let out = Command::new(BIN)
        .arg("import")
        .arg(&csv)
        .args(["--node", &format!("127.0.0.1:{}", node.spec.http_port)])
        .arg("--json")
        .output()
        .unwrap();
    assert!(!out.status.success(), "rejected rows still fail the import");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(summary["created"], 0, "{summary}");
    assert_eq!(summary["already_present"], 3, "{summary}");
    let json_lines: Vec<String> = summary["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].to_string())
        .collect();
    assert_eq!(json_lines, file_lines, "{summary}");

    let jsonl = dir.path().join("more.jsonl");
    std::fs::write(
        &jsonl,
        "{\"name\":\"Grace Hopper\",\"email\":\"grace@example.com\",\"phone\":null}\n\
         \n\
         {\"name\":\"Bad\",\"email\":\"bad\"}\n\
         [\"not an object\"]\n\
         {\"name\":\"Linus\",\"email\":\"linus@example.com\",\"address\":\"Portland\"}\n",
    )
    .unwrap();
    let (ok, out) = import(&node, &jsonl, &[]);
    assert!(!ok);
    assert!(
        out.contains("created 2 row(s)") && out.contains("rejected 2 row(s)"),
        "{out}"
    );
    assert!(out.contains("line 3") && out.contains("line 4"), "{out}");
    assert_eq!(emails(&node).await.len(), 5);

    let clean = dir.path().join("clean.jsonl");
    std::fs::write(&clean, "{\"name\":\"Ok\",\"email\":\"ok@example.com\"}\n").unwrap();
    let (ok, out) = import(&node, &clean, &[]);
    assert!(ok, "{out}");
    let (ok, out) = import(&node, &dir.path().join("missing.csv"), &[]);
    assert!(!ok && out.contains("cannot open"), "{out}");
}
