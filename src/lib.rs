//! # customer-cluster
//!
//! Customers as long-lived actors on a cluster of nodes. Every customer lives as one
//! [`ractor`] actor on exactly one node, chosen by rendezvous hashing of its id over the live
//! members; a database actor (embedded SQLite) makes customers durable and is reached from
//! every node through a cluster-wide process group. Any node serves the whole HTTP/JSON API.
//!
//! ## The path of a request
//!
//! ```text
//!  client ──HTTP──▶ api (any node, "entry")
//!                    │  validate, then Gateway: owner = rendezvous(id, members)
//!                    ▼
//!           owner's Registry  (local call, or one remote RPC over ractor_cluster)
//!                    │  get-or-activate
//!                    ▼
//!           Customer actor #id (serialises all ops on this customer; caches the row)
//!                    │  load / compare-and-set write
//!                    ▼
//!           Database actor (local or remote) ──▶ storage engine: group commit, one fsync
//!                    │
//!  client ◀──────────┘  reply travels back the same way; X-Owner-Node / X-Entry-Node
//! ```
//!
//! ## Modules, in reading order
//!
//! * [`error`] — the one error enum; [`codec`] — the only place that names bincode.
//! * [`customer`] — the domain: fields, validation, merge patch (pure).
//! * [`storage`] — SQLite and PostgreSQL stores and the group-commit engine on dedicated threads.
//! * [`cluster`] — wire protocol, placement, membership.
//! * [`actors`] — supervisor, registry, customer and database actors; the gateway.
//! * [`api`] — axum router and the error→HTTP mapping; [`client`] — CLI client and how
//!   every subcommand ends (output, exit code).
//! * [`bench`](mod@bench) — load generator: closed/open loop, owner-aware routing, latencies.
//! * [`faults`] — fault testing: the failover workload and its report, and the
//!   linearizability checker for recorded histories.
//! * [`clock`] — every clock the crate reads (wall clock for records, the raw holder clock).
//! * [`events`] — the node's event bus behind `GET /v1/events` and the dashboard.
//! * [`config`], [`node`], [`telemetry`], [`cli`] — wiring.

#![warn(missing_docs)]

pub mod actors;
pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod customer;
pub mod error;
pub mod events;
pub mod faults;
pub mod node;
pub mod storage;
pub mod telemetry;
