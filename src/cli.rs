//! Command-line interface: the `customer-cluster` binary's subcommands (clap derive).
//!
//! The clap definitions here are the single description of the command line: `--help`, the
//! shell completions (`customer-cluster completions bash|zsh|fish|elvish|powershell`, via
//! `clap_complete`) and the man page (`customer-cluster man`, via `clap_mangen`) are all
//! generated from them, so they cannot drift apart.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::client::commands::{
    ClientOpts, CreateArgs, DeleteArgs, GetArgs, ListArgs, StatusArgs, UpdateArgs,
};
use crate::config::ConfigLayer;

/// Customers as long-lived actors on a cluster of nodes.
///
/// Run `customer-cluster node` on each host (or `scripts/cluster.sh up` for a local 3-node
/// cluster); then do CRUD through any node with the client subcommands or plain HTTP.
#[derive(Debug, Parser)]
#[command(name = "customer-cluster", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node until SIGINT/SIGTERM (graceful leave).
    ///
    /// Every flag is also a config-file key (`--idle-timeout-s` → `idle_timeout_s`) and an
    /// environment variable (`CUSTOMER_CLUSTER_IDLE_TIMEOUT_S`). Precedence: defaults < file <
    /// env < flags.
    #[command(
        after_help = "Example:\n  customer-cluster node --config config/node1.toml\n  customer-cluster node --name n2 --cookie-file cookie --seeds 127.0.0.1:4701 --http-addr 127.0.0.1:8082 --cluster-addr 127.0.0.1:4702"
    )]
    Node(Box<NodeArgs>),
    /// Create a customer.
    Create {
        /// Customer fields.
        #[command(flatten)]
        args: CreateArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show one customer.
    Get {
        /// Which customer.
        #[command(flatten)]
        args: GetArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Where a customer lives: shard, placement owner, lease holder, token, validity left.
    Where {
        /// Which customer.
        #[command(flatten)]
        args: GetArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List customers (ordered by id, paginated).
    List {
        /// Paging.
        #[command(flatten)]
        args: ListArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Change some fields of a customer (JSON merge patch).
    Update {
        /// Fields to change.
        #[command(flatten)]
        args: UpdateArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Delete a customer.
    Delete {
        /// Which customer.
        #[command(flatten)]
        args: DeleteArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Import customers from a CSV (name,email[,phone][,address]) or JSON Lines file.
    ///
    /// Exits non-zero when any row was rejected; rejected rows are never partially written.
    Import {
        /// What to import.
        #[command(flatten)]
        args: crate::client::import::ImportArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Load generator: closed- or open-loop load against one or more nodes; prints
    /// throughput and latency percentiles (see BENCHMARKS.md and scripts/bench.sh).
    Bench(Box<crate::bench::BenchArgs>),
    /// Print saved `bench --out` results as a table, and ratios between runs.
    BenchReport(crate::bench::compare::ReportArgs),
    /// Run a steady read/write workload for failover experiments and report what clients saw
    /// (used by scripts/failover.sh).
    Workload(crate::faults::WorkloadArgs),
    /// Check a saved history (JSON Lines from `workload --history`) for linearizability, stale
    /// reads and lost acknowledged writes; exits non-zero on a violation.
    CheckHistory(crate::faults::CheckHistoryArgs),
    /// Measure round trips of a bare heartbeat ping from one node (--node) to a member.
    Ping {
        /// Target and count.
        #[command(flatten)]
        args: crate::client::commands::PingArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show the cluster as one node sees it: members, owned share, active actors, database.
    Status {
        /// Refresh.
        #[command(flatten)]
        args: StatusArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Print the cluster events one node sees: its recent ones (up to 200), then new ones as
    /// they happen (members, placement, shard leases, restarts, database availability).
    Events {
        /// Follow or stop.
        #[command(flatten)]
        args: crate::client::events::EventsArgs,
        /// Connection options.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Print a shell completion script to stdout.
    #[command(after_help = "Install, e.g.:\n  \
        bash: customer-cluster completions bash > ~/.local/share/bash-completion/completions/customer-cluster\n  \
        zsh:  customer-cluster completions zsh > ~/.zfunc/_customer-cluster   (with fpath+=~/.zfunc before compinit)\n  \
        fish: customer-cluster completions fish > ~/.config/fish/completions/customer-cluster.fish")]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per subcommand with --dir.
    #[command(
        after_help = "Read it with: customer-cluster man | man -l -\nInstall every page: customer-cluster man --dir ~/.local/share/man/man1"
    )]
    Man {
        /// Write customer-cluster.1 and customer-cluster-SUBCOMMAND.1 pages into this
        /// directory (it must exist) instead of printing the main page.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The binary's name, as completions and the man page call it.
pub const BIN_NAME: &str = "customer-cluster";

/// The completion script for `shell`, generated from the clap definitions.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN_NAME, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The command as the man pages describe it: without clap's `help` subcommand (every page
/// already is the help), built so subcommands know their full names
/// (`customer-cluster-import`).
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The man page (section 1, roff), generated from the clap definitions: name, synopsis,
/// description, options and the list of subcommands.
pub fn man_page() -> Result<String, std::io::Error> {
    let mut out = Vec::new();
    clap_mangen::Man::new(man_command()).render(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes the main page and one page per subcommand (the ones the main page refers to) into
/// `dir`; returns the files written, main page first.
pub fn write_man_pages(dir: &std::path::Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let cmd = man_command();
    let mut written = vec![clap_mangen::Man::new(cmd.clone()).generate_to(dir)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(clap_mangen::Man::new(sub.clone()).generate_to(dir)?);
    }
    Ok(written)
}

/// `customer-cluster man [--dir DIR]`: the main page on stdout, or every page written to DIR
/// and their names listed.
pub fn man(dir: Option<&std::path::Path>) -> Result<String, std::io::Error> {
    let Some(dir) = dir else {
        return man_page();
    };
    let written = write_man_pages(dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot write man pages to {}: {e}", dir.display()),
        )
    })?;
    Ok(written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect())
}

/// Parses the process's arguments as [`Cli::parse`] does (exiting with clap's message on an
/// error), and notes which secrets `node` got as command-line arguments
/// ([`NodeArgs::secrets_in_argv`]).
pub fn parse() -> Cli {
    from_matches(&Cli::command().get_matches()).unwrap_or_else(|e| e.exit())
}

/// The [`Cli`] of parsed `matches`, with [`NodeArgs::secrets_in_argv`] filled in.
pub fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
    let mut cli = Cli::from_arg_matches(matches)?;
    if let (Command::Node(args), Some(("node", node))) = (&mut cli.command, matches.subcommand()) {
        args.secrets_in_argv = secrets_in_argv(node);
    }
    Ok(cli)
}

/// The secret-carrying flags of `node` given on the command line itself (not through their
/// environment variable or the config file): `--cookie`, `--api-token`, and `--database-url`
/// when its URL holds a password.
fn secrets_in_argv(node: &ArgMatches) -> Vec<&'static str> {
    let on_command_line = |id: &str| node.value_source(id) == Some(ValueSource::CommandLine);
    let url_has_password = node
        .get_one::<String>("database_url")
        .is_some_and(|url| crate::storage::postgres::redact_url(url) != *url);
    [
        ("--cookie", on_command_line("cookie")),
        ("--api-token", on_command_line("api_token")),
        (
            "--database-url",
            on_command_line("database_url") && url_has_password,
        ),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// The start-up warning for a secret given as the command-line argument `flag` (one of
/// [`NodeArgs::secrets_in_argv`]): where it can be read, and what to use instead.
pub fn secret_in_argv_warning(flag: &str) -> String {
    let env = format!(
        "CUSTOMER_CLUSTER_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_ascii_uppercase()
    );
    format!(
        "{flag} was given on the command line, where every local user can read it (ps, /proc/<pid>/cmdline); use {flag}-file FILE (or {env}_FILE) instead"
    )
}

/// Arguments of `node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// TOML config file (see config/default.toml for every key).
    #[arg(long, env = "CUSTOMER_CLUSTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Settings (each overrides the config file).
    #[command(flatten)]
    pub settings: ConfigLayer,
    /// Test-only fault hooks (`crate::faults::hooks`), hidden from `--help`: they may break
    /// the consistency contract on purpose. Repeatable; the env var takes a comma list. A
    /// build without the `fault-hooks` feature (every release build) refuses them at start-up.
    #[arg(
        long = "fault-hook",
        hide = true,
        env = "CUSTOMER_CLUSTER_FAULT_HOOKS",
        value_delimiter = ',',
        value_name = "SPEC"
    )]
    pub fault_hooks: Vec<String>,
    /// Secret-carrying flags given as command-line arguments (filled in by [`parse`], not a
    /// flag itself): every local user can read them, so the node warns at start.
    #[arg(skip)]
    pub secrets_in_argv: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets_given(args: &[&str]) -> Vec<&'static str> {
        let argv = ["customer-cluster", "node", "--name", "n1"]
            .iter()
            .chain(args);
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        match from_matches(&matches).unwrap().command {
            Command::Node(node) => node.secrets_in_argv,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_given_as_command_line_arguments_are_noticed_and_their_files_are_not() {
        assert_eq!(
            secrets_given(&["--cookie", "c0123456789abcdef"]),
            ["--cookie"]
        );
        assert_eq!(
            secrets_given(&["--api-token=a,b", "--cookie-file", "cookie"]),
            ["--api-token"]
        );
        assert_eq!(
            secrets_given(&["--database-url", "postgres://cc:pw@db:5432/c"]),
            ["--database-url"]
        );
        assert!(secrets_given(&["--database-url", "postgres://cc@db:5432/c"]).is_empty());
        assert!(
            secrets_given(&[
                "--cookie-file",
                "c",
                "--api-token-file",
                "t",
                "--database-url-file",
                "u"
            ])
            .is_empty()
        );
        let warning = secret_in_argv_warning("--api-token");
        assert!(
            warning.contains("--api-token-file FILE")
                && warning.contains("CUSTOMER_CLUSTER_API_TOKEN_FILE")
                && warning.contains("/proc/<pid>/cmdline"),
            "{warning}"
        );
    }

    fn subcommands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect()
    }

    #[test]
    fn the_bash_completion_offers_every_subcommand_and_their_flags() {
        let script = completions(clap_complete::Shell::Bash);
        assert!(
            script.contains("complete -F"),
            "not a bash completion script"
        );
        let names = subcommands();
        assert!(names.len() >= 14, "{names:?}");
        for name in &names {
            assert!(
                script.contains(name.as_str()),
                "no {name} in the bash completion"
            );
        }
        for flag in ["--if-match", "--node", "--rejects", "--watch"] {
            assert!(script.contains(flag), "no {flag} in the bash completion");
        }
    }

    #[test]
    fn zsh_and_fish_completions_name_the_binary() {
        for shell in [clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let script = completions(shell);
            assert!(script.contains(BIN_NAME), "{shell}: {script}");
            assert!(script.contains("import"), "{shell}");
        }
    }

    #[test]
    fn the_man_page_is_roff_with_a_name_section_and_every_subcommand() {
        let page = man_page().unwrap();
        let title_at = page.find("\n.TH customer-cluster 1 ").expect("a title");
        let name_at = page.find("\n.SH NAME\n").expect("a NAME section");
        assert!(title_at < name_at, "the title comes first");
        let name_line = page[name_at..].lines().nth(2).unwrap_or_default();
        assert!(
            name_line.starts_with("customer\\-cluster \\- "),
            "NAME is `name \\- summary` (what apropos and whatis read): {name_line}"
        );
        assert!(page.contains("\n.SH SYNOPSIS\n"));
        for name in subcommands().iter().filter(|n| *n != "help") {
            let reference = format!("customer\\-cluster\\-{}(1)", name.replace('-', "\\-"));
            assert!(page.contains(&reference), "no {reference}");
        }
        assert!(
            !page.contains("cluster\\-help(1)"),
            "help has no page of its own"
        );
        // Roff requests are a dot and a name; nothing else may start a line with a dot, and no
        // line may start with a quote (which roff reads as a comment-like escape).
        for line in page.lines().filter(|l| l.starts_with('.')) {
            let request = line[1..].split_whitespace().next().unwrap_or("");
            assert!(
                !request.is_empty() && request.chars().all(|c| c.is_ascii_alphanumeric()),
                "not a roff request: {line}"
            );
        }
    }

    #[test]
    fn man_dir_writes_a_page_for_every_subcommand_the_main_page_names() {
        let dir = tempfile::tempdir().unwrap();
        let listed = man(Some(dir.path())).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert!(
            files.contains(&"customer-cluster.1".to_owned()),
            "{files:?}"
        );
        for name in subcommands().iter().filter(|n| *n != "help") {
            let file = format!("customer-cluster-{name}.1");
            assert!(files.contains(&file), "no {file} in {files:?}");
            assert!(listed.contains(&file), "{listed}");
        }
        let import = std::fs::read_to_string(dir.path().join("customer-cluster-import.1")).unwrap();
        assert!(import.contains("\\-\\-rejects"), "{import}");
        assert!(man(Some(&dir.path().join("missing"))).is_err());
    }
}
