//! The dependency direction of ARCHITECTURE.md, checked on the source tree rather than trusted:
//! `api → actors → storage`, `actors ↔ cluster`, and the client side free of the server's
//! HTTP stack.
//!
//! Each rule names a folder and the `crate::…` modules its files must not reach. A reference
//! is any path through `crate::` — a `use` line (grouped ones included), a full path in code,
//! or a doc link — because each of them is an arrow in the dependency graph. The test reads
//! the files with `std::fs`; it does not need the crate to compile differently.

use std::fs;
use std::path::{Path, PathBuf};

/// One forbidden arrow: files under `folder` must not reach any of `forbidden`.
struct Rule {
    /// Folder under `src/`.
    folder: &'static str,
    /// Module paths below `crate::` (e.g. `storage`, `api::json`) that are off limits.
    forbidden: &'static [&'static str],
    /// Why, for the failure message.
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        folder: "api",
        forbidden: &["storage", "cluster"],
        why: "api depends on actors only; ask the Gateway",
    },
    Rule {
        folder: "cluster",
        forbidden: &["actors", "api"],
        why: "actors call into cluster, never the reverse (cluster defines the protocol actors speak)",
    },
    Rule {
        folder: "storage",
        forbidden: &["actors", "cluster", "api"],
        why: "storage knows nothing of actors, the cluster or HTTP",
    },
    Rule {
        folder: "client",
        forbidden: &[
            "api::json",
            "api::handlers",
            "api::error",
            "api::middleware",
            "api::openapi",
            "api::router",
            "api::AppState",
        ],
        why: "the client shares the plain JSON types (api::model), not the server's axum code",
    },
];

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every module path the source reaches through `crate::`, with its 1-based line: `crate::a::b`
/// gives `a::b`; a group `crate::{a, b::{c, d}}` gives `a`, `b::c`, `b::d`.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        let before = &source[..source.len() - rest.len() + at];
        let line = before.matches('\n').count() + 1;
        let preceded_by_ident = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue; // e.g. `customer_cluster::`: another crate's path, not ours
        }
        for path in expand(rest) {
            found.push((line, path));
        }
    }
    found
}

/// The paths at the start of `text` (what follows a `crate::`).
fn expand(text: &str) -> Vec<String> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        return group_items(group)
            .into_iter()
            .flat_map(|item| expand(&item))
            .collect();
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
        .unwrap_or(text.len());
    let head = &text[..end];
    match head.find("::{") {
        Some(brace) => {
            let prefix = &head[..brace];
            group_items(&text[brace + 3..])
                .into_iter()
                .flat_map(|item| expand(&item))
                .map(|p| {
                    if p == "self" {
                        prefix.to_owned()
                    } else {
                        format!("{prefix}::{p}")
                    }
                })
                .collect()
        }
        None => vec![head.trim_end_matches([':', '{']).to_owned()],
    }
}

/// The top-level comma-separated items of a `{…}` group whose opening brace was just consumed.
fn group_items(text: &str) -> Vec<String> {
    let (mut items, mut current, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|i| {
            let name = i.split(" as ").next().unwrap_or(&i);
            name.split_whitespace().collect::<String>()
        })
        .filter(|i| !i.is_empty())
        .collect()
}

/// Whether `path` is `module` or lies below it.
fn reaches(path: &str, module: &str) -> bool {
    path == module || path.starts_with(&format!("{module}::"))
}

/// The violations of `rule` in the tree under `src`, as readable lines.
fn violations(src: &Path, rule: &Rule) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(&src.join(rule.folder)) {
        let source =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (line, path) in crate_paths(&source) {
            if let Some(module) = rule.forbidden.iter().find(|m| reaches(&path, m)) {
                found.push(format!(
                    "{}:{line} reaches crate::{path} (no {} → {module}: {})",
                    file.strip_prefix(src).unwrap_or(&file).display(),
                    rule.folder,
                    rule.why
                ));
            }
        }
    }
    found
}

#[test]
fn arrows_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let broken: Vec<String> = RULES.iter().flat_map(|r| violations(&src, r)).collect();
    assert!(
        broken.is_empty(),
        "dependency rules of ARCHITECTURE.md broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_rule_looks_at_files_that_exist() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for rule in RULES {
        assert!(
            !rust_files(&src.join(rule.folder)).is_empty(),
            "src/{} has no .rs files: the rule checks nothing",
            rule.folder
        );
    }
}

#[test]
fn the_api_json_types_module_is_free_of_axum() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/model.rs");
    let source = fs::read_to_string(&model).expect("src/api/model.rs");
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        assert!(
            !code.contains("axum"),
            "src/api/model.rs:{} names axum; the CLI client shares this module",
            n + 1
        );
    }
}

#[test]
fn plain_paths_grouped_imports_and_doc_links_are_all_seen() {
    let source = "use crate::storage::MAX_PAGE_SIZE;\n\
                  use crate::{actors::gateway::Gateway, cluster};\n\
                  use crate::actors::{self, registry::{RegistryMsg, Stats as S}};\n\
                  /// See [`crate::api::json::JsonBody`].\n\
                  let x = crate::cluster::placement::shares(&names);\n\
                  use customer_cluster::storage::Store;\n";
    let paths: Vec<(usize, String)> = crate_paths(source);
    let want = [
        (1, "storage::MAX_PAGE_SIZE"),
        (2, "actors::gateway::Gateway"),
        (2, "cluster"),
        (3, "actors"),
        (3, "actors::registry::RegistryMsg"),
        (3, "actors::registry::Stats"),
        (4, "api::json::JsonBody"),
        (5, "cluster::placement::shares"),
    ];
    let got: Vec<(usize, &str)> = paths.iter().map(|(l, p)| (*l, p.as_str())).collect();
    assert_eq!(got, want);
    assert!(reaches("cluster::placement", "cluster"));
    assert!(reaches("api::json::JsonBody", "api::json"));
    assert!(!reaches("api::model::CustomerJson", "api::json"));
    assert!(!reaches("clusters", "cluster"));
}

#[test]
fn a_forbidden_arrow_is_reported_with_its_file_and_line() {
    let dir = std::env::temp_dir().join(format!("architecture-test-{}", std::process::id()));
    let api = dir.join("api");
    fs::create_dir_all(&api).expect("temp dir");
    fs::write(
        api.join("handlers.rs"),
        "//! fine\nuse crate::actors::gateway::Gateway;\nuse crate::{error::Error, storage};\n",
    )
    .expect("temp file");
    let found = violations(&dir, &RULES[0]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("api/handlers.rs:3 reaches crate::storage"),
        "{found:?}"
    );
}
