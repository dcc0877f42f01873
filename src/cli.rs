//! Command-line interface: the `customer-cluster` binary's subcommands (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Measure round trips of a bare Registry ping from one node (--node) to a member.
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
}
