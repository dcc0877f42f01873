//! The binary's command line without a node: generated completions and man page, what the
//! CLI does when its reader goes away early, and flags that must accept what people paste.

mod support;

use std::process::{Command, Output, Stdio};

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
