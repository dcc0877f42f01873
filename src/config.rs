//! Node configuration: one documented struct, built from layers.
//!
//! Precedence, lowest first: built-in defaults < config file (`--config`, TOML) < environment
//! (`CUSTOMER_CLUSTER_<KEY>`) < command-line flags. [`ConfigLayer`] is both the clap argument
//! set and the TOML schema, so a key has the same name everywhere: `--idle-timeout-s`,
//! `idle_timeout_s = 300`, `CUSTOMER_CLUSTER_IDLE_TIMEOUT_S=300`. Clap resolves env-vs-flag;
//! [`ConfigLayer::over`] puts that on top of the file; [`Config::resolve`] applies defaults and
//! validates.
//!
//! Secrets (cookie, API tokens) can come from files so they stay out of `ps` output and shell
//! history; they never appear in `Debug` output or logs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cluster::lease::LeaseConfig;
use crate::cluster::lease::config::defaults as lease_defaults;
use crate::error::{Error, Result};
use crate::storage::engine::{Backend, EngineConfig};
use crate::storage::postgres::{PostgresConfig, redact_url};
use crate::storage::prune::PruneConfig;

/// One layer of settings; every key optional. Doubles as the clap flags of `node` and the TOML
/// file schema.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Node name: unique in the cluster and stable across restarts (placement hashes it).
    #[arg(long, env = "CUSTOMER_CLUSTER_NAME")]
    pub name: Option<String>,

    /// Address the cluster (node-to-node) listener binds [default: 127.0.0.1:4701].
    #[arg(long, env = "CUSTOMER_CLUSTER_CLUSTER_ADDR")]
    pub cluster_addr: Option<SocketAddr>,

    /// Address peers dial to reach this node, `host:port` [default: --cluster-addr]. Needed
    /// when binding 0.0.0.0.
    #[arg(long, env = "CUSTOMER_CLUSTER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Address the HTTP API binds [default: 127.0.0.1:8081].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Most cluster connections still in their handshake (not yet authenticated) at once;
    /// one more is closed at once [default: 64].
    #[arg(long, env = "CUSTOMER_CLUSTER_CLUSTER_MAX_UNAUTHENTICATED")]
    pub cluster_max_unauthenticated: Option<usize>,

    /// Most of those one source address may hold while it is not a known peer (one that
    /// completed a handshake with this node in the last hour); 0 = no per-address cap.
    /// Strangers also never get the quarter of the slots kept for known peers, so a flood from
    /// a few addresses cannot keep a new node out. Raise it when many nodes join at once from
    /// behind one NAT address [default: 4].
    #[arg(long, env = "CUSTOMER_CLUSTER_CLUSTER_MAX_UNAUTHENTICATED_PER_SOURCE")]
    pub cluster_max_unauthenticated_per_source: Option<usize>,

    /// Comma-separated source ranges allowed to connect to the cluster port (e.g.
    /// `10.0.0.0/8,127.0.0.1`); others are closed at accept. Empty: any address may try the
    /// handshake [default: empty].
    #[arg(long, env = "CUSTOMER_CLUSTER_CLUSTER_ALLOW", value_delimiter = ',')]
    pub cluster_allow: Option<Vec<String>>,

    /// Longest a cluster connection may take from connect to the end of its handshake (TLS
    /// and cookie), in ms; slower ones are closed [default: 5000].
    #[arg(long, env = "CUSTOMER_CLUSTER_CLUSTER_HANDSHAKE_TIMEOUT_MS")]
    pub cluster_handshake_timeout_ms: Option<u64>,

    /// Comma-separated cluster addresses of peers to join; retried with backoff until reachable.
    #[arg(long, env = "CUSTOMER_CLUSTER_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,

    /// Shared cluster secret (ractor_cluster magic cookie). Prefer --cookie-file.
    #[arg(long, env = "CUSTOMER_CLUSTER_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,

    /// File holding the cluster cookie (trailing whitespace ignored).
    #[arg(long, env = "CUSTOMER_CLUSTER_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,

    /// SQLite file: when set, this node hosts a database actor. Relative to --data-dir.
    #[arg(long, env = "CUSTOMER_CLUSTER_DB_PATH")]
    pub db_path: Option<PathBuf>,

    /// PostgreSQL server shared by every node (`postgres://user:password@host:port/db`): when
    /// set, every node runs a database actor over it. Excludes --db-path. Prefer
    /// --database-url-file for a URL with a password.
    #[arg(long, env = "CUSTOMER_CLUSTER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// File holding the PostgreSQL URL (trailing whitespace ignored).
    #[arg(long, env = "CUSTOMER_CLUSTER_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Allow a PostgreSQL server on a non-loopback host. The node speaks to PostgreSQL without
    /// TLS, so queries, personal data and (without SCRAM) the password cross the network in
    /// cleartext: give this only on a private network (such as a compose network) or through a
    /// TLS-terminating proxy on loopback [default: false, refused at start-up].
    #[arg(
        long,
        env = "CUSTOMER_CLUSTER_DATABASE_ALLOW_PLAINTEXT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub database_allow_plaintext: Option<bool>,

    /// Most PostgreSQL connections this node opens [default: 8].
    #[arg(long, env = "CUSTOMER_CLUSTER_DB_POOL_SIZE")]
    pub db_pool_size: Option<usize>,

    /// Base directory for relative paths [default: current directory].
    #[arg(long, env = "CUSTOMER_CLUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Comma-separated bearer tokens accepted on /v1 (several allow rotation). None = open API.
    #[arg(
        long = "api-token",
        env = "CUSTOMER_CLUSTER_API_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(alias = "api_tokens")]
    pub api_token: Option<Vec<String>>,

    /// File with bearer tokens, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "CUSTOMER_CLUSTER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Log format: `text` for people, `json` for machines [default: text].
    #[arg(long, env = "CUSTOMER_CLUSTER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, tracing-subscriber syntax (e.g. `info`, `customer_cluster=debug`)
    /// [default: info, or RUST_LOG].
    #[arg(long, env = "CUSTOMER_CLUSTER_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Seconds a customer actor may sit idle before it is passivated [default: 300].
    #[arg(long, env = "CUSTOMER_CLUSTER_IDLE_TIMEOUT_S")]
    pub idle_timeout_s: Option<u64>,

    /// Most customer actors active on this node at once; activating one more passivates the
    /// least recently used (about 15 KB each) [default: 20000].
    #[arg(long, env = "CUSTOMER_CLUSTER_MAX_ACTIVE_CUSTOMERS")]
    pub max_active_customers: Option<usize>,

    /// Interval between heartbeats to each peer, in ms [default: 500].
    #[arg(long, env = "CUSTOMER_CLUSTER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,

    /// A peer silent for this long (ms) is evicted from placement [default: 3000].
    #[arg(long, env = "CUSTOMER_CLUSTER_FAILURE_TIMEOUT_MS")]
    pub failure_timeout_ms: Option<u64>,

    /// Deadline for one call to another actor or node, in ms [default: 5000].
    #[arg(long, env = "CUSTOMER_CLUSTER_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Largest accepted HTTP request body, in bytes [default: 1048576].
    #[arg(long, env = "CUSTOMER_CLUSTER_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Most writes per database transaction; 1 = one fsync per write [default: 512].
    #[arg(long, env = "CUSTOMER_CLUSTER_DB_MAX_BATCH")]
    pub db_max_batch: Option<usize>,

    /// Most writes waiting for the database writer; one more is refused at once with 503
    /// (nothing applied) [default: 4096].
    #[arg(long, env = "CUSTOMER_CLUSTER_DB_MAX_QUEUED_WRITES")]
    pub db_max_queued_writes: Option<usize>,

    /// Database reader threads [default: 2].
    #[arg(long, env = "CUSTOMER_CLUSTER_DB_READERS")]
    pub db_readers: Option<usize>,

    /// Seconds a request id (Idempotency-Key) is kept after its write, so a retry gets the
    /// first answer; then it is pruned. At least 86400 (24 h) [default: 86400].
    #[arg(long, env = "CUSTOMER_CLUSTER_REQUEST_RETENTION_S")]
    pub request_retention_s: Option<u64>,

    /// How long a graceful stop waits for in-flight requests, in ms [default: 5000].
    #[arg(long, env = "CUSTOMER_CLUSTER_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,

    /// PEM certificate chain for inter-node TLS (enables TLS together with --tls-key, --tls-ca).
    #[arg(long, env = "CUSTOMER_CLUSTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for inter-node TLS.
    #[arg(long, env = "CUSTOMER_CLUSTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle that peer certificates must chain to.
    #[arg(long, env = "CUSTOMER_CLUSTER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Shard lease period in ms: how long a contender must see a node's lease record
    /// unchanged before taking its shards over. Same on every node [default: 2000].
    #[arg(long, env = "CUSTOMER_CLUSTER_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,

    /// Interval between lease renews, in ms; the TTL must be at least 4 times it
    /// [default: 500].
    #[arg(long, env = "CUSTOMER_CLUSTER_LEASE_RENEW_MS")]
    pub lease_renew_ms: Option<u64>,

    /// Lease safety margin in ms, taken off every validity a renew earns; covers clock-rate
    /// error between hosts up to margin/TTL. Never below TTL x 2ρ/(1+ρ) [default: 50].
    #[arg(long, env = "CUSTOMER_CLUSTER_LEASE_MARGIN_MS")]
    pub lease_margin_ms: Option<u64>,

    /// Where GETs are served from: `cache` (the owner's cache, under its lease) or `db`
    /// (always the database; for hosts whose pauses the guest cannot see) [default: cache].
    #[arg(long, env = "CUSTOMER_CLUSTER_READ_MODE")]
    pub read_mode: Option<ReadMode>,

    /// Most time, in ms, a client may take to send a complete request head (from its first
    /// byte; on a fresh connection, from the connect); slower clients are disconnected
    /// [default: 10000].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,

    /// An HTTP keep-alive connection idle for this long (ms) between requests is closed
    /// [default: 60000].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_IDLE_TIMEOUT_MS")]
    pub http_idle_timeout_ms: Option<u64>,

    /// Most time, in ms, one HTTP request may take from its head to its response (504 after);
    /// at least --request-timeout-ms [default: 2 x --request-timeout-ms].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_REQUEST_TIMEOUT_MS")]
    pub http_request_timeout_ms: Option<u64>,

    /// Most open HTTP connections; one more is answered 503 and closed at once
    /// [default: 4096].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,

    /// Most open HTTP connections from one source IP address; one more is answered 429 and
    /// closed at once. 0 = no per-address cap: set 0 (or a cap above the proxy's pool) when a
    /// reverse proxy or load balancer connects for every client from one address
    /// [default: 256].
    #[arg(long, env = "CUSTOMER_CLUSTER_HTTP_MAX_CONNECTIONS_PER_CLIENT")]
    pub http_max_connections_per_client: Option<usize>,

    /// Most /v1/events streams open at once (at most half of --http-max-connections); one
    /// more is answered 503 [default: 64].
    #[arg(long, env = "CUSTOMER_CLUSTER_MAX_EVENT_STREAMS")]
    pub max_event_streams: Option<usize>,

    /// Most /v1/events streams open at once from one source IP address; one more is answered
    /// 429. 0 = no per-address cap (behind a proxy that connects for every client from one
    /// address) [default: 4].
    #[arg(long, env = "CUSTOMER_CLUSTER_MAX_EVENT_STREAMS_PER_CLIENT")]
    pub max_event_streams_per_client: Option<usize>,

    /// A /v1/events stream ends after this many seconds; the client reconnects (and gets the
    /// recent events replayed) [default: 3600].
    #[arg(long, env = "CUSTOMER_CLUSTER_EVENT_STREAM_MAX_AGE_S")]
    pub event_stream_max_age_s: Option<u64>,
}

macro_rules! overlay {
    ($top:ident, $base:ident, $($field:ident),* $(,)?) => {
        ConfigLayer { $($field: $top.$field.or($base.$field)),* }
    };
}

impl ConfigLayer {
    /// Reads a TOML file layer.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidInput(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::InvalidInput(format!("invalid config file {}: {e}", path.display()))
        })
    }

    /// `self` on top of `base`: each key set in `self` wins.
    pub fn over(self, base: ConfigLayer) -> ConfigLayer {
        overlay!(
            self,
            base,
            name,
            cluster_addr,
            advertise_addr,
            http_addr,
            cluster_max_unauthenticated,
            cluster_max_unauthenticated_per_source,
            cluster_allow,
            cluster_handshake_timeout_ms,
            seeds,
            cookie,
            cookie_file,
            db_path,
            database_url,
            database_url_file,
            database_allow_plaintext,
            db_pool_size,
            data_dir,
            api_token,
            api_token_file,
            log_format,
            log_level,
            idle_timeout_s,
            max_active_customers,
            heartbeat_ms,
            failure_timeout_ms,
            request_timeout_ms,
            max_body_bytes,
            db_max_batch,
            db_max_queued_writes,
            db_readers,
            request_retention_s,
            shutdown_grace_ms,
            tls_cert,
            tls_key,
            tls_ca,
            lease_ttl_ms,
            lease_renew_ms,
            lease_margin_ms,
            read_mode,
            http_header_timeout_ms,
            http_idle_timeout_ms,
            http_request_timeout_ms,
            http_max_connections,
            http_max_connections_per_client,
            max_event_streams,
            max_event_streams_per_client,
            event_stream_max_age_s,
        )
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a node serves GETs from (DESIGN §1, §6 R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// From the owner's cache while it holds the shard's lease (HELD, clock before
    /// `valid_until`, row loaded under the current token); one database read per activation.
    #[default]
    Cache,
    /// Every GET reads the database. For hosts where a pause hidden from the guest (some
    /// hypervisors) could outlast the lease without the holder clock noticing.
    Db,
}

/// A secret string: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Inter-node TLS material (paths; loaded at start-up by `cluster::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Certificate chain presented to peers.
    pub cert: PathBuf,
    /// Private key for `cert`.
    pub key: PathBuf,
    /// CA that peers' certificates must chain to.
    pub ca: PathBuf,
}

/// The resolved, validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Stable node name, used for placement and shown in `X-Owner-Node`.
    pub name: String,
    /// Cluster listener bind address.
    pub cluster_addr: SocketAddr,
    /// `host:port` peers dial to reach us.
    pub advertise_addr: String,
    /// HTTP API bind address.
    pub http_addr: SocketAddr,
    /// Peers to dial at start (and re-dial while they are unreachable).
    pub seeds: Vec<String>,
    /// Most cluster connections in their handshake at once (`cluster::gate`).
    pub cluster_max_unauthenticated: usize,
    /// Most of those from one address that is not a known peer (`cluster::sources`; 0 = off).
    pub cluster_max_unauthenticated_per_source: usize,
    /// Source ranges allowed on the cluster port; empty = any.
    pub cluster_allow: Vec<crate::cluster::sources::Cidr>,
    /// Longest cluster handshake, from connect to its last frame.
    pub cluster_handshake_timeout: Duration,
    /// Cluster cookie.
    pub cookie: Secret,
    /// Database file when this node hosts the (only) SQLite database actor.
    pub db_path: Option<PathBuf>,
    /// PostgreSQL server when every node runs a database actor over it (never logged as is:
    /// see [`Config::database`]).
    pub database_url: Option<Secret>,
    /// Most PostgreSQL connections per node.
    pub db_pool_size: usize,
    /// Accepted API bearer tokens; empty = no authentication.
    pub api_tokens: Vec<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_level: Option<String>,
    /// Idle time before a customer actor is passivated.
    pub idle_timeout: Duration,
    /// Cap on active customer actors; the least recently used is passivated beyond it.
    pub max_active_customers: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which a peer is evicted.
    pub failure_timeout: Duration,
    /// Deadline for one actor/node call.
    pub request_timeout: Duration,
    /// HTTP body limit in bytes.
    pub max_body_bytes: usize,
    /// Group-commit batch cap.
    pub db_max_batch: usize,
    /// Bound of the database write queue.
    pub db_max_queued_writes: usize,
    /// Database reader threads.
    pub db_readers: usize,
    /// How long request ids are kept and how they are pruned (F4); the retention is at least
    /// 24 h.
    pub request_pruning: PruneConfig,
    /// Grace period of a graceful stop.
    pub shutdown_grace: Duration,
    /// Inter-node TLS, when configured.
    pub tls: Option<TlsPaths>,
    /// Shard lease timing (TTL, renew interval, margin), validated by its L4 rules.
    pub lease: LeaseConfig,
    /// Where GETs are served from.
    pub read_mode: ReadMode,
    /// Limits of the HTTP edge: timeouts and the connection cap.
    pub http: HttpLimits,
}

/// Limits of the HTTP edge (enforced by `api::server`). Each one bounds what a client can hold
/// on to: a slow or idle client costs a connection slot for at most these times, and the
/// number of slots is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a request head may take to arrive, from its first byte (on a fresh connection,
    /// from the connect).
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest one request may take from its head to its response; then 504.
    pub request_timeout: Duration,
    /// Most connections open at once; the next one is refused with a 503.
    pub max_connections: usize,
    /// Most connections open at once from one source IP address (0 = no such cap); the next
    /// one is refused with a 429.
    pub max_connections_per_client: usize,
    /// Most `/v1/events` streams open at once; the next one is answered 503.
    pub max_event_streams: usize,
    /// Most `/v1/events` streams open at once from one source IP address (0 = no such cap);
    /// the next one is answered 429.
    pub max_event_streams_per_client: usize,
    /// Age at which a `/v1/events` stream ends (the client reconnects).
    pub event_stream_max_age: Duration,
}

/// Built-in defaults, in one place.
pub mod defaults {
    /// Cluster listener.
    pub const CLUSTER_ADDR: &str = "127.0.0.1:4701";
    /// HTTP API.
    pub const HTTP_ADDR: &str = "127.0.0.1:8081";
    /// Customer actor idle timeout, seconds.
    pub const IDLE_TIMEOUT_S: u64 = 300;
    /// Active customer actors per node: ~15 KB of state each (BENCHMARKS.md); a scan of 200k
    /// distinct ids under this cap left the node at 460 MiB resident (3.2 GiB without it).
    pub const MAX_ACTIVE_CUSTOMERS: usize = 20_000;
    /// Heartbeat interval, ms.
    pub const HEARTBEAT_MS: u64 = 500;
    /// Eviction after this much silence, ms: 6 heartbeats. Long enough that a busy 2-core
    /// machine does not evict healthy peers, short enough that a frozen node costs seconds.
    pub const FAILURE_TIMEOUT_MS: u64 = 3000;
    /// Per-call deadline, ms.
    pub const REQUEST_TIMEOUT_MS: u64 = 5000;
    /// HTTP body limit.
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// Database reader threads.
    pub const DB_READERS: usize = 2;
    /// Request id retention, seconds: 24 h, the shortest DESIGN §6 F4 allows.
    pub const REQUEST_RETENTION_S: u64 = 24 * 60 * 60;
    /// Graceful stop grace, ms.
    pub const SHUTDOWN_GRACE_MS: u64 = 5000;
    /// HTTP request head timeout, ms: generous for any real client, short for a slowloris.
    pub const HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
    /// HTTP keep-alive idle timeout, ms: longer than the usual client pool idle time (so
    /// clients, not the server, close idle connections), short enough to free abandoned ones.
    pub const HTTP_IDLE_TIMEOUT_MS: u64 = 60_000;
    /// The HTTP request timeout is this many times the node's request timeout: a request may
    /// be retried once against a recomputed owner, and each attempt may use a full deadline.
    pub const HTTP_REQUEST_TIMEOUT_FACTOR: u32 = 2;
    /// Cluster connections in their handshake at once: a cluster of dozens of nodes restarting
    /// together needs a few each; an anonymous flood gets no further than this.
    pub const CLUSTER_MAX_UNAUTHENTICATED: usize = 64;
    /// Unauthenticated connections one unknown address may hold: an honest node needs one or
    /// two while it dials; a flood from one address gets no more than this.
    pub const CLUSTER_MAX_UNAUTHENTICATED_PER_SOURCE: usize = 4;
    /// Cluster handshake deadline, ms: an honest handshake takes milliseconds, a peer on a
    /// loaded host a second or two; a client that says nothing is closed after this.
    pub const CLUSTER_HANDSHAKE_TIMEOUT_MS: u64 = 5000;
    /// Open HTTP connections: a few thousand clients, far below the usual fd limit.
    pub const HTTP_MAX_CONNECTIONS: usize = 4096;
    /// Open HTTP connections per source address: far more than a browser (6) or a client
    /// pool needs, and room for a load generator with a thousand requests in flight from one
    /// host (`wrk -c 1000`, the overload test's 1024 clients); a quarter of the global cap, so
    /// one address cannot take the node's connections, and 32 MiB of head buffers at most.
    pub const HTTP_MAX_CONNECTIONS_PER_CLIENT: usize = 1024;
    /// Open event streams: a dashboard or `events` watcher needs one each.
    pub const MAX_EVENT_STREAMS: usize = 64;
    /// Open event streams per source address: a few tabs of the dashboard.
    pub const MAX_EVENT_STREAMS_PER_CLIENT: usize = 4;
    /// Event stream lifetime, seconds: bounds what a stream holds on to (a token revoked since
    /// it opened, among others); clients reconnect.
    pub const EVENT_STREAM_MAX_AGE_S: u64 = 3600;
    /// Shortest accepted API token, bytes: 128 bits, so it cannot be guessed online.
    pub const MIN_API_TOKEN_BYTES: usize = 16;
    /// Shortest accepted cluster cookie, bytes: 128 bits, so it cannot be guessed online.
    pub const MIN_COOKIE_BYTES: usize = 16;
    /// Fewest different characters in a cluster cookie: refuses `aaaa…` and `abab…`-like
    /// cookies; a random hex cookie of 16 characters has fewer with a chance below 1 in 10^6.
    pub const MIN_COOKIE_DISTINCT_BYTES: usize = 5;
}

impl Config {
    /// Loads `--config FILE` (if any) under the env/flag layer, applies defaults, validates.
    pub fn load(file: Option<&Path>, args: ConfigLayer) -> Result<Self> {
        let base = match file {
            Some(path) => ConfigLayer::from_file(path)?,
            None => ConfigLayer::default(),
        };
        Self::resolve(args.over(base))
    }

    /// Applies defaults to a merged layer and validates the result.
    pub fn resolve(layer: ConfigLayer) -> Result<Self> {
        let invalid = |m: String| Error::InvalidInput(m);
        let name = layer
            .name
            .ok_or_else(|| invalid("--name is required (a unique, stable node name)".into()))?;
        validate_name(&name)?;
        let cluster_addr = layer
            .cluster_addr
            .unwrap_or_else(|| parse_default(defaults::CLUSTER_ADDR));
        let advertise_addr = match layer.advertise_addr {
            Some(a) => a,
            None if cluster_addr.ip().is_unspecified() => {
                return Err(invalid(format!(
                    "--cluster-addr {cluster_addr} binds all interfaces: set --advertise-addr to the address peers should dial"
                )));
            }
            None => cluster_addr.to_string(),
        };
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from("."));
        let cookie = load_cookie(layer.cookie, layer.cookie_file.as_deref())?;
        let api_tokens = load_tokens(layer.api_token, layer.api_token_file.as_deref())?;
        let database_url =
            load_database_url(layer.database_url, layer.database_url_file.as_deref())?;
        if let Some(url) = &database_url {
            check_database_transport(
                url.expose(),
                layer.database_allow_plaintext.unwrap_or(false),
            )?;
        }
        if database_url.is_some() && layer.db_path.is_some() {
            return Err(invalid(
                "--db-path (SQLite on this node) and --database-url (PostgreSQL shared by every node) exclude each other: give one".into(),
            ));
        }
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let request_pruning = PruneConfig::new(Duration::from_secs(
            layer
                .request_retention_s
                .unwrap_or(defaults::REQUEST_RETENTION_S),
        ))
        .map_err(|e| invalid(format!("--request-retention-s: {e}")))?;
        let request_timeout = ms(layer.request_timeout_ms, defaults::REQUEST_TIMEOUT_MS);
        let http = HttpLimits {
            header_timeout: ms(
                layer.http_header_timeout_ms,
                defaults::HTTP_HEADER_TIMEOUT_MS,
            ),
            idle_timeout: ms(layer.http_idle_timeout_ms, defaults::HTTP_IDLE_TIMEOUT_MS),
            request_timeout: layer
                .http_request_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(request_timeout * defaults::HTTP_REQUEST_TIMEOUT_FACTOR),
            max_connections: layer
                .http_max_connections
                .unwrap_or(defaults::HTTP_MAX_CONNECTIONS),
            max_connections_per_client: layer
                .http_max_connections_per_client
                .unwrap_or(defaults::HTTP_MAX_CONNECTIONS_PER_CLIENT),
            max_event_streams: layer
                .max_event_streams
                .unwrap_or(defaults::MAX_EVENT_STREAMS),
            max_event_streams_per_client: layer
                .max_event_streams_per_client
                .unwrap_or(defaults::MAX_EVENT_STREAMS_PER_CLIENT),
            event_stream_max_age: Duration::from_secs(
                layer
                    .event_stream_max_age_s
                    .unwrap_or(defaults::EVENT_STREAM_MAX_AGE_S),
            ),
        };
        let config = Config {
            name,
            cluster_addr,
            advertise_addr,
            http_addr: layer
                .http_addr
                .unwrap_or_else(|| parse_default(defaults::HTTP_ADDR)),
            seeds: layer
                .seeds
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            cluster_max_unauthenticated: layer
                .cluster_max_unauthenticated
                .unwrap_or(defaults::CLUSTER_MAX_UNAUTHENTICATED),
            cluster_max_unauthenticated_per_source: layer
                .cluster_max_unauthenticated_per_source
                .unwrap_or(defaults::CLUSTER_MAX_UNAUTHENTICATED_PER_SOURCE),
            cluster_allow: parse_allow(layer.cluster_allow.unwrap_or_default())?,
            cluster_handshake_timeout: ms(
                layer.cluster_handshake_timeout_ms,
                defaults::CLUSTER_HANDSHAKE_TIMEOUT_MS,
            ),
            cookie,
            db_path: layer.db_path.map(|p| data_dir.join(p)),
            database_url,
            db_pool_size: layer
                .db_pool_size
                .unwrap_or(crate::storage::postgres::DEFAULT_POOL_SIZE),
            api_tokens,
            log_format: layer.log_format.unwrap_or_default(),
            log_level: layer.log_level,
            idle_timeout: Duration::from_secs(
                layer.idle_timeout_s.unwrap_or(defaults::IDLE_TIMEOUT_S),
            ),
            max_active_customers: layer
                .max_active_customers
                .unwrap_or(defaults::MAX_ACTIVE_CUSTOMERS),
            heartbeat: ms(layer.heartbeat_ms, defaults::HEARTBEAT_MS),
            failure_timeout: ms(layer.failure_timeout_ms, defaults::FAILURE_TIMEOUT_MS),
            request_timeout,
            max_body_bytes: layer.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            db_max_batch: layer
                .db_max_batch
                .unwrap_or(crate::storage::engine::DEFAULT_MAX_BATCH),
            db_max_queued_writes: layer
                .db_max_queued_writes
                .unwrap_or(crate::storage::engine::DEFAULT_MAX_QUEUED_WRITES),
            db_readers: layer.db_readers.unwrap_or(defaults::DB_READERS),
            request_pruning,
            shutdown_grace: ms(layer.shutdown_grace_ms, defaults::SHUTDOWN_GRACE_MS),
            tls: tls_paths(layer.tls_cert, layer.tls_key, layer.tls_ca)?,
            lease: LeaseConfig {
                ttl: ms(layer.lease_ttl_ms, lease_defaults::TTL_MS),
                renew_interval: ms(layer.lease_renew_ms, lease_defaults::RENEW_MS),
                margin: ms(layer.lease_margin_ms, lease_defaults::MARGIN_MS),
            },
            read_mode: layer.read_mode.unwrap_or_default(),
            http,
        };
        config.validate()?;
        Ok(config)
    }

    /// A loopback configuration with defaults and the given name and database file; ports are
    /// 0 (chosen by the OS). For in-process tests and embedding.
    pub fn local(name: &str, db_path: Option<PathBuf>) -> Self {
        let layer = ConfigLayer {
            name: Some(name.to_owned()),
            cookie: Some("local-cluster-cookie".to_owned()),
            cluster_addr: Some(parse_default("127.0.0.1:0")),
            http_addr: Some(parse_default("127.0.0.1:0")),
            advertise_addr: Some("127.0.0.1:0".to_owned()),
            db_path,
            ..ConfigLayer::default()
        };
        let mut config =
            Self::resolve(layer).unwrap_or_else(|e| unreachable!("local config is valid: {e}"));
        config.http_addr = parse_default("127.0.0.1:0");
        config
    }

    fn validate(&self) -> Result<()> {
        let invalid = |m: &str| Err(Error::InvalidInput(m.to_owned()));
        if self.idle_timeout.is_zero() {
            return invalid("--idle-timeout-s must be at least 1");
        }
        if self.max_active_customers == 0 {
            return invalid("--max-active-customers must be at least 1");
        }
        if self.heartbeat < Duration::from_millis(10) {
            return invalid("--heartbeat-ms must be at least 10");
        }
        if self.failure_timeout < self.heartbeat * 2 {
            return invalid("--failure-timeout-ms must be at least twice --heartbeat-ms");
        }
        if self.request_timeout < Duration::from_millis(10) {
            return invalid("--request-timeout-ms must be at least 10");
        }
        if self.http.header_timeout < Duration::from_millis(100)
            || self.http.idle_timeout < Duration::from_millis(100)
        {
            return invalid(
                "--http-header-timeout-ms and --http-idle-timeout-ms must be at least 100",
            );
        }
        if self.http.request_timeout < self.request_timeout {
            return invalid("--http-request-timeout-ms must be at least --request-timeout-ms");
        }
        if self.http.max_connections == 0 || self.http.max_connections > 1_000_000 {
            return invalid("--http-max-connections must be from 1 to 1000000");
        }
        if self.http.max_event_streams == 0 || self.http.max_event_streams > 100_000 {
            return invalid("--max-event-streams must be from 1 to 100000");
        }
        if self.http.event_stream_max_age < Duration::from_secs(1) {
            return invalid("--event-stream-max-age-s must be at least 1");
        }
        if self.cluster_max_unauthenticated == 0 || self.cluster_max_unauthenticated > 100_000 {
            return invalid("--cluster-max-unauthenticated must be from 1 to 100000");
        }
        if self.cluster_handshake_timeout < Duration::from_millis(100) {
            return invalid("--cluster-handshake-timeout-ms must be at least 100");
        }
        if self.max_body_bytes < 1024 {
            return invalid("--max-body-bytes must be at least 1024");
        }
        if self.db_max_batch == 0 || self.db_readers == 0 || self.db_max_queued_writes == 0 {
            return invalid(
                "--db-max-batch, --db-max-queued-writes and --db-readers must be at least 1",
            );
        }
        if self.db_pool_size <= self.db_readers {
            return invalid(
                "--db-pool-size must exceed --db-readers (the writer and each reader hold a connection)",
            );
        }
        if self.http_addr == self.cluster_addr && self.http_addr.port() != 0 {
            return invalid("--http-addr and --cluster-addr must differ");
        }
        if split_host_port(&self.advertise_addr).is_none() {
            return invalid("--advertise-addr must be host:port");
        }
        for seed in &self.seeds {
            if split_host_port(seed).is_none() {
                return Err(Error::InvalidInput(format!(
                    "seed {seed:?} is not host:port"
                )));
            }
        }
        self.lease.validate()
    }

    /// Whether this node runs a Database actor: with --db-path (SQLite) or --database-url
    /// (PostgreSQL, where every node does).
    pub fn hosts_database(&self) -> bool {
        self.db_path.is_some() || self.database_url.is_some()
    }

    /// The storage engine this node runs, if any.
    pub fn database(&self) -> Option<EngineConfig> {
        let backend = match (&self.db_path, &self.database_url) {
            (Some(path), _) => Backend::Sqlite(path.clone()),
            // lock_timeout, idle_in_transaction_session_timeout and the renew deadline follow
            // the lease TTL (DESIGN §6 F2, L2).
            (None, Some(url)) => Backend::Postgres(
                PostgresConfig {
                    pool_size: self.db_pool_size,
                    ..PostgresConfig::new(url.clone())
                }
                .for_lease(self.lease.ttl, self.lease.margin),
            ),
            (None, None) => return None,
        };
        Some(EngineConfig {
            backend,
            max_batch: self.db_max_batch,
            max_queued_writes: self.db_max_queued_writes,
            readers: self.db_readers,
            prune: Some(self.request_pruning.clone()),
        })
    }

    /// Host part of the advertised address (what the NodeServer advertises to peers).
    pub fn advertise_host(&self) -> String {
        split_host_port(&self.advertise_addr)
            .map(|(h, _)| h.to_owned())
            .unwrap_or_else(|| self.cluster_addr.ip().to_string())
    }

    /// The IP the cluster listener binds.
    pub fn cluster_bind_ip(&self) -> IpAddr {
        self.cluster_addr.ip()
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

fn parse_default(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|_| unreachable!("default {addr} parses"))
}

/// Longest node name, bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// True for a well-formed node name: 1..=64 characters of `[A-Za-z0-9._-]`. Names are written
/// into logs, headers and metrics labels, so nothing else is ever accepted — neither at start
/// (`--name`) nor from clients (the ping endpoint).
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn validate_name(name: &str) -> Result<()> {
    if is_valid_node_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "node name {name:?} must be 1..64 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// `--cluster-allow`'s ranges; blank entries are ignored.
fn parse_allow(ranges: Vec<String>) -> Result<Vec<crate::cluster::sources::Cidr>> {
    ranges
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse()
                .map_err(|e| Error::InvalidInput(format!("--cluster-allow: {e}")))
        })
        .collect()
}

fn load_cookie(inline: Option<String>, file: Option<&Path>) -> Result<Secret> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidInput(
                "give either --cookie or --cookie-file, not both".into(),
            ));
        }
        (Some(c), None) => c,
        (None, Some(path)) => read_secret_file(path, "cookie")?,
        (None, None) => {
            return Err(Error::InvalidInput(
                "a cluster cookie is required: --cookie-file FILE (or --cookie, or CUSTOMER_CLUSTER_COOKIE)".into(),
            ));
        }
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(Error::InvalidInput(
            "the cluster cookie must not be empty".into(),
        ));
    }
    if value.len() < defaults::MIN_COOKIE_BYTES {
        return Err(Error::InvalidInput(format!(
            "the cluster cookie is {} bytes; use at least {} random bytes (e.g. `od -An -N24 -tx1 /dev/urandom | tr -d ' \\n' > cookie`)",
            value.len(),
            defaults::MIN_COOKIE_BYTES
        )));
    }
    let distinct = value
        .bytes()
        .collect::<std::collections::HashSet<u8>>()
        .len();
    if distinct < defaults::MIN_COOKIE_DISTINCT_BYTES {
        return Err(Error::InvalidInput(format!(
            "the cluster cookie uses only {distinct} different characters, so it is easy to guess; use random bytes (e.g. `od -An -N24 -tx1 /dev/urandom | tr -d ' \\n' > cookie`)"
        )));
    }
    Ok(Secret::new(value))
}

fn load_database_url(inline: Option<String>, file: Option<&Path>) -> Result<Option<Secret>> {
    let url = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidInput(
                "give either --database-url or --database-url-file, not both".into(),
            ));
        }
        (Some(url), None) => url,
        (None, Some(path)) => read_secret_file(path, "database URL")?,
        (None, None) => return Ok(None),
    };
    let url = url.trim().to_owned();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::InvalidInput(format!(
            "--database-url must be a postgres:// or postgresql:// URL, got {}",
            redact_url(&url)
        )));
    }
    Ok(Some(Secret::new(url)))
}

/// Refuses a PostgreSQL URL that would carry data in cleartext across a network: the node has
/// no TLS to PostgreSQL, so only a loopback host or a Unix socket keeps queries, personal data
/// and the password on this machine, unless `allow_plaintext` (`--database-allow-plaintext`)
/// says the network in between is private. With several hosts every one must qualify; a
/// `hostaddr` is where the connection goes, so it is checked instead of its host name.
fn check_database_transport(url: &str, allow_plaintext: bool) -> Result<()> {
    use tokio_postgres::config::Host;
    if allow_plaintext {
        return Ok(());
    }
    let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
        Error::InvalidInput(format!("invalid database URL {}: {e}", redact_url(url)))
    })?;
    let addrs = parsed.get_hostaddrs();
    let remote =
        parsed
            .get_hosts()
            .iter()
            .enumerate()
            .find_map(|(i, host)| match (addrs.get(i), host) {
                (Some(ip), _) if ip.is_loopback() => None,
                (Some(ip), _) => Some(ip.to_string()),
                (None, Host::Unix(_)) => None,
                (None, Host::Tcp(name)) if is_loopback_name(name) => None,
                (None, Host::Tcp(name)) => Some(name.clone()),
            });
    match remote {
        None => Ok(()),
        Some(host) => Err(Error::InvalidInput(format!(
            "the database URL names host {host}, which is not loopback, and the node speaks to PostgreSQL without TLS: \
             queries, personal data and the password would cross the network in cleartext. Use 127.0.0.1 or a Unix socket \
             (a TLS-terminating proxy on loopback), or, on a private network only, pass --database-allow-plaintext \
             (CUSTOMER_CLUSTER_DATABASE_ALLOW_PLAINTEXT=true)"
        ))),
    }
}

/// `localhost`, or an IP literal (IPv6 with or without brackets) in a loopback range.
fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn load_tokens(inline: Option<Vec<String>>, file: Option<&Path>) -> Result<Vec<Secret>> {
    let mut tokens: Vec<String> = inline.unwrap_or_default();
    if let Some(path) = file {
        let text = read_secret_file(path, "API token")?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.trim().to_owned()).collect();
    if tokens.iter().any(String::is_empty) {
        return Err(Error::InvalidInput("API tokens must not be empty".into()));
    }
    if tokens
        .iter()
        .any(|t| t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(Error::InvalidInput(
            "API tokens must not contain whitespace".into(),
        ));
    }
    if let Some(short) = tokens
        .iter()
        .find(|t| t.len() < defaults::MIN_API_TOKEN_BYTES)
    {
        return Err(Error::InvalidInput(format!(
            "an API token is {} bytes; tokens must be at least {} bytes (e.g. `openssl rand -hex 16`)",
            short.len(),
            defaults::MIN_API_TOKEN_BYTES
        )));
    }
    Ok(tokens.into_iter().map(Secret::new).collect())
}

fn read_secret_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidInput(format!("cannot read {what} file {}: {e}", path.display()))
    })
}

fn tls_paths(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<TlsPaths>> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsPaths { cert, key, ca })),
        _ => Err(Error::InvalidInput(
            "inter-node TLS needs all of --tls-cert, --tls-key and --tls-ca".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> ConfigLayer {
        ConfigLayer {
            name: Some("n1".into()),
            cookie: Some("secret-cookie-0123456789".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_everything_not_given() {
        let c = Config::resolve(minimal()).unwrap();
        assert_eq!(c.cluster_addr.to_string(), defaults::CLUSTER_ADDR);
        assert_eq!(c.http_addr.to_string(), defaults::HTTP_ADDR);
        assert_eq!(c.advertise_addr, defaults::CLUSTER_ADDR);
        assert_eq!(c.heartbeat, Duration::from_millis(defaults::HEARTBEAT_MS));
        assert_eq!(c.max_active_customers, defaults::MAX_ACTIVE_CUSTOMERS);
        assert!(c.api_tokens.is_empty() && c.db_path.is_none() && c.tls.is_none());
    }

    #[test]
    fn the_active_customer_cap_is_a_flag_and_zero_is_refused() {
        let mut l = minimal();
        l.max_active_customers = Some(10);
        assert_eq!(Config::resolve(l.clone()).unwrap().max_active_customers, 10);
        l.max_active_customers = Some(0);
        let err = Config::resolve(l).unwrap_err().to_string();
        assert!(err.contains("--max-active-customers"), "{err}");
    }

    #[test]
    fn flags_and_env_win_over_the_file() {
        let file: ConfigLayer =
            toml::from_str("name = \"from-file\"\nheartbeat_ms = 100\nseeds = [\"127.0.0.1:1\"]")
                .unwrap();
        let flags = ConfigLayer {
            heartbeat_ms: Some(250),
            cookie: Some("flag-cookie-0123456789".into()),
            ..Default::default()
        };
        let c = Config::resolve(flags.over(file)).unwrap();
        assert_eq!(c.name, "from-file");
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert_eq!(c.seeds, vec!["127.0.0.1:1".to_string()]);
    }

    #[test]
    fn the_shipped_config_files_parse_and_resolve() {
        for (file, text) in [
            ("default", include_str!("../config/default.toml")),
            ("node1", include_str!("../config/node1.toml")),
            ("node2", include_str!("../config/node2.toml")),
            ("node3", include_str!("../config/node3.toml")),
        ] {
            let layer: ConfigLayer = toml::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let c =
                Config::resolve(minimal().over(layer)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                c.heartbeat,
                Duration::from_millis(defaults::HEARTBEAT_MS),
                "{file}"
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<ConfigLayer>("nmae = \"typo\"").is_err());
    }

    #[test]
    fn a_node_without_a_cookie_or_with_an_empty_one_refuses_to_start() {
        let mut l = minimal();
        l.cookie = None;
        assert!(Config::resolve(l.clone()).is_err());
        l.cookie = Some("   ".into());
        assert!(Config::resolve(l).is_err());
    }

    #[test]
    fn the_cookie_and_tokens_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join("cookie");
        let tokens = dir.path().join("tokens");
        std::fs::write(&cookie, "s3cret-from-a-file-42\n").unwrap();
        std::fs::write(
            &tokens,
            "# current\nnew-token-0123456789\n\nold-token-0123456789\n",
        )
        .unwrap();
        let mut l = minimal();
        l.cookie = None;
        l.cookie_file = Some(cookie);
        l.api_token_file = Some(tokens);
        let c = Config::resolve(l).unwrap();
        assert_eq!(c.cookie.expose(), "s3cret-from-a-file-42");
        let t: Vec<&str> = c.api_tokens.iter().map(Secret::expose).collect();
        assert_eq!(t, ["new-token-0123456789", "old-token-0123456789"]);
    }

    #[test]
    fn an_api_token_shorter_than_16_bytes_refuses_to_start_with_a_message() {
        let mut l = minimal();
        l.api_token = Some(vec!["0123456789abcdef".into(), "short".into()]);
        let err = Config::resolve(l).unwrap_err().to_string();
        assert!(err.contains("at least 16 bytes"), "{err}");
        let mut l = minimal();
        l.api_token = Some(vec!["0123456789abcdef".into()]);
        assert_eq!(Config::resolve(l).unwrap().api_tokens.len(), 1);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = Config::resolve(minimal()).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn nonsense_values_are_refused_with_a_message() {
        let mut l = minimal();
        l.name = Some("bad name!".into());
        assert!(Config::resolve(l).is_err());
        let mut l = minimal();
        l.heartbeat_ms = Some(1000);
        l.failure_timeout_ms = Some(1500);
        assert!(Config::resolve(l).is_err());
        let mut l = minimal();
        l.cluster_addr = Some("0.0.0.0:4701".parse().unwrap());
        assert!(Config::resolve(l).is_err());
        let mut l = minimal();
        l.seeds = Some(vec!["nohostport".into()]);
        assert!(Config::resolve(l).is_err());
        let mut l = minimal();
        l.tls_cert = Some("c.pem".into());
        assert!(Config::resolve(l).is_err());
    }

    #[test]
    fn lease_timing_and_read_mode_default_to_the_design_values() {
        let c = Config::resolve(minimal()).unwrap();
        assert_eq!(c.lease, LeaseConfig::default());
        assert_eq!(c.lease.ttl, Duration::from_millis(2000));
        assert_eq!(c.lease.renew_interval, Duration::from_millis(500));
        assert_eq!(c.lease.margin, Duration::from_millis(50));
        assert_eq!(c.read_mode, ReadMode::Cache);
    }

    #[test]
    fn the_default_file_documents_the_built_in_lease_values() {
        let layer: ConfigLayer = toml::from_str(include_str!("../config/default.toml")).unwrap();
        let c = Config::resolve(minimal().over(layer)).unwrap();
        assert_eq!(c.lease, LeaseConfig::default());
        assert_eq!(c.read_mode, ReadMode::default());
        assert_eq!(
            c.cluster_max_unauthenticated,
            defaults::CLUSTER_MAX_UNAUTHENTICATED
        );
        assert_eq!(
            c.cluster_handshake_timeout,
            Duration::from_millis(defaults::CLUSTER_HANDSHAKE_TIMEOUT_MS)
        );
        assert_eq!(
            c.request_pruning.retention(),
            Duration::from_secs(defaults::REQUEST_RETENTION_S)
        );
    }

    #[test]
    fn cluster_port_limits_are_validated() {
        let zero = ConfigLayer {
            cluster_max_unauthenticated: Some(0),
            ..minimal()
        };
        assert!(Config::resolve(zero).is_err());
        let short = ConfigLayer {
            cluster_handshake_timeout_ms: Some(10),
            ..minimal()
        };
        assert!(Config::resolve(short).is_err());
        let ranges = ConfigLayer {
            cluster_allow: Some(vec!["10.0.0.0/8".into(), " ".into(), "::1".into()]),
            ..minimal()
        };
        let c = Config::resolve(ranges).unwrap();
        assert_eq!(c.cluster_allow.len(), 2);
        assert_eq!(
            c.cluster_max_unauthenticated_per_source,
            defaults::CLUSTER_MAX_UNAUTHENTICATED_PER_SOURCE
        );
        let bad = ConfigLayer {
            cluster_allow: Some(vec!["10.0.0.0/99".into()]),
            ..minimal()
        };
        let e = Config::resolve(bad).unwrap_err().to_string();
        assert!(e.contains("--cluster-allow"), "{e}");
    }

    #[test]
    fn a_cookie_of_few_different_characters_is_refused() {
        for weak in [
            "aaaaaaaaaaaaaaaaaaaa",
            "abababababababababab",
            "1234123412341234",
        ] {
            let layer = ConfigLayer {
                cookie: Some(weak.into()),
                ..minimal()
            };
            let e = Config::resolve(layer).unwrap_err().to_string();
            assert!(e.contains("different characters"), "{weak}: {e}");
        }
        let random = ConfigLayer {
            cookie: Some("3f9a0c71e2b4d85a".into()),
            ..minimal()
        };
        assert!(Config::resolve(random).is_ok());
    }

    #[test]
    fn lease_keys_come_from_the_file_and_flags_win() {
        let file: ConfigLayer = toml::from_str(
            "lease_ttl_ms = 4000\nlease_renew_ms = 1000\nlease_margin_ms = 80\nread_mode = \"db\"",
        )
        .unwrap();
        let c = Config::resolve(minimal().over(file.clone())).unwrap();
        assert_eq!(c.lease.ttl, Duration::from_millis(4000));
        assert_eq!(c.lease.renew_interval, Duration::from_millis(1000));
        assert_eq!(c.lease.margin, Duration::from_millis(80));
        assert_eq!(c.read_mode, ReadMode::Db);
        let flags = ConfigLayer {
            lease_renew_ms: Some(500),
            read_mode: Some(ReadMode::Cache),
            ..minimal()
        };
        let c = Config::resolve(flags.over(file)).unwrap();
        assert_eq!(c.lease.ttl, Duration::from_millis(4000));
        assert_eq!(c.lease.renew_interval, Duration::from_millis(500));
        assert_eq!(c.read_mode, ReadMode::Cache);
    }

    #[test]
    fn lease_flags_and_read_mode_parse_from_the_command_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            layer: ConfigLayer,
        }
        let cli = Cli::try_parse_from([
            "node",
            "--lease-ttl-ms",
            "3000",
            "--lease-renew-ms",
            "700",
            "--lease-margin-ms",
            "60",
            "--read-mode",
            "db",
        ])
        .unwrap();
        assert_eq!(cli.layer.lease_ttl_ms, Some(3000));
        assert_eq!(cli.layer.lease_renew_ms, Some(700));
        assert_eq!(cli.layer.lease_margin_ms, Some(60));
        assert_eq!(cli.layer.read_mode, Some(ReadMode::Db));
        assert!(Cli::try_parse_from(["node", "--read-mode", "disk"]).is_err());
    }

    #[test]
    fn unsafe_lease_timings_refuse_to_start_with_a_message() {
        let refused = |l: ConfigLayer| match Config::resolve(l) {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("not refused: {other:?}"),
        };
        let mut l = minimal();
        l.lease_ttl_ms = Some(1000);
        assert!(refused(l).contains("4 x --lease-renew-ms"));
        let mut l = minimal();
        l.lease_margin_ms = Some(1);
        assert!(refused(l).contains("--lease-margin-ms"));
        let mut l = minimal();
        l.lease_margin_ms = Some(2000);
        assert!(refused(l).contains("lapses between renews"));
    }

    #[test]
    fn a_database_url_makes_every_node_a_postgres_database_node() {
        let mut l = minimal();
        l.database_url = Some("postgres://cc:pw@127.0.0.1:5432/customers".into());
        let c = Config::resolve(l).unwrap();
        assert!(c.hosts_database());
        let engine = c.database().unwrap();
        assert!(engine.backend.is_shared());
        assert_eq!(
            engine.backend.describe(),
            "postgres postgres://cc:***@127.0.0.1:5432/customers"
        );
        assert!(!format!("{c:?}").contains("pw"));
        assert!(!Config::resolve(minimal()).unwrap().hosts_database());
    }

    #[test]
    fn postgres_lock_and_renew_timeouts_follow_the_lease_ttl_and_the_write_queue_is_bounded() {
        let mut l = minimal();
        l.database_url = Some("postgres://cc@127.0.0.1:5432/customers".into());
        l.lease_ttl_ms = Some(400);
        l.lease_renew_ms = Some(100);
        l.lease_margin_ms = Some(20);
        let engine = Config::resolve(l.clone()).unwrap().database().unwrap();
        let Backend::Postgres(pg) = engine.backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.lock_timeout, Duration::from_millis(200));
        assert_eq!(pg.renew_timeout, Duration::from_millis(190));
        assert_eq!(
            engine.max_queued_writes,
            crate::storage::engine::DEFAULT_MAX_QUEUED_WRITES
        );
        l.db_max_queued_writes = Some(0);
        assert!(Config::resolve(l).is_err());
    }

    #[test]
    fn the_database_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-url");
        std::fs::write(&file, "postgresql://cc:pw@127.0.0.1/customers\n").unwrap();
        let mut l = minimal();
        l.database_url_file = Some(file.clone());
        let c = Config::resolve(l).unwrap();
        assert_eq!(
            c.database_url.as_ref().map(Secret::expose),
            Some("postgresql://cc:pw@127.0.0.1/customers")
        );
        // The file variant is held to the same transport rule as the inline one.
        std::fs::write(&file, "postgresql://cc:pw@db/customers\n").unwrap();
        let mut l = minimal();
        l.database_url_file = Some(file);
        let err = Config::resolve(l.clone()).unwrap_err().to_string();
        assert!(
            err.contains("--database-allow-plaintext") && !err.contains("pw"),
            "{err}"
        );
        l.database_allow_plaintext = Some(true);
        assert!(Config::resolve(l).unwrap().hosts_database());
    }

    #[test]
    fn a_database_host_off_loopback_is_refused_unless_plaintext_is_allowed() {
        let resolve = |url: &str, allow: Option<bool>| {
            let mut l = minimal();
            l.database_url = Some(url.into());
            l.database_allow_plaintext = allow;
            Config::resolve(l)
        };
        for local in [
            "postgres://cc:pw@127.0.0.1:5432/customers",
            "postgres://cc:pw@127.0.0.2/customers",
            "postgres://cc:pw@localhost/customers",
            "postgres://cc:pw@[::1]:5432/customers",
            "postgres://cc:pw@%2Fvar%2Frun%2Fpostgresql/customers",
            "postgres://cc:pw@db.internal/customers?hostaddr=127.0.0.1",
        ] {
            assert!(resolve(local, None).is_ok(), "{local} was refused");
        }
        for remote in [
            "postgres://cc:pw@db.internal:5432/customers",
            "postgres://cc:pw@10.0.0.5/customers",
            "postgres://cc:pw@127.0.0.1,db.internal/customers",
            "postgres://cc:pw@localhost/customers?hostaddr=10.0.0.5",
        ] {
            match resolve(remote, None) {
                Err(Error::InvalidInput(m)) => {
                    assert!(m.contains("--database-allow-plaintext"), "{remote}: {m}");
                    assert!(
                        m.contains("not loopback") && !m.contains("pw@"),
                        "{remote}: {m}"
                    );
                }
                other => panic!("{remote} was accepted: {other:?}"),
            }
            assert!(resolve(remote, Some(false)).is_err(), "{remote}");
            assert!(
                resolve(remote, Some(true)).is_ok(),
                "{remote} with the opt-in"
            );
        }
    }

    #[test]
    fn database_allow_plaintext_is_a_bare_flag_and_an_env_value() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            layer: ConfigLayer,
        }
        let bare = Cli::try_parse_from(["node", "--database-allow-plaintext"]).unwrap();
        assert_eq!(bare.layer.database_allow_plaintext, Some(true));
        let valued = Cli::try_parse_from(["node", "--database-allow-plaintext=false"]).unwrap();
        assert_eq!(valued.layer.database_allow_plaintext, Some(false));
        let file: ConfigLayer = toml::from_str("database_allow_plaintext = true").unwrap();
        assert_eq!(file.database_allow_plaintext, Some(true));
    }

    #[test]
    fn db_path_and_database_url_together_are_refused() {
        let mut l = minimal();
        l.db_path = Some("n1.db".into());
        l.database_url = Some("postgres://cc@127.0.0.1/customers".into());
        let err = Config::resolve(l).unwrap_err();
        assert!(err.to_string().contains("exclude each other"), "{err}");
        let mut l = minimal();
        l.database_url = Some("mysql://cc:pw@h/d".into());
        let err = Config::resolve(l).unwrap_err().to_string();
        assert!(err.contains("postgres://") && !err.contains("pw"), "{err}");
    }

    #[test]
    fn a_cookie_shorter_than_16_bytes_refuses_to_start_with_a_clear_error() {
        let mut l = minimal();
        l.cookie = Some("test-cookie".into());
        match Config::resolve(l.clone()) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("at least 16"), "{m}"),
            other => panic!("an 11-byte cookie was accepted: {other:?}"),
        }
        l.cookie = Some("0123456789abcdef".into());
        assert!(Config::resolve(l).is_ok());
    }

    #[test]
    fn http_limits_have_defaults_follow_the_request_timeout_and_refuse_nonsense() {
        let c = Config::resolve(minimal()).unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.request_timeout, c.request_timeout * 2);
        assert_eq!(c.http.max_connections, defaults::HTTP_MAX_CONNECTIONS);
        let file: ConfigLayer = toml::from_str(
            "http_header_timeout_ms = 500\nhttp_idle_timeout_ms = 700\nhttp_request_timeout_ms = 9000\nhttp_max_connections = 3",
        )
        .unwrap();
        let c = Config::resolve(minimal().over(file)).unwrap();
        assert_eq!(
            c.http,
            HttpLimits {
                header_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_millis(700),
                request_timeout: Duration::from_millis(9000),
                max_connections: 3,
                max_connections_per_client: defaults::HTTP_MAX_CONNECTIONS_PER_CLIENT,
                max_event_streams: defaults::MAX_EVENT_STREAMS,
                max_event_streams_per_client: defaults::MAX_EVENT_STREAMS_PER_CLIENT,
                event_stream_max_age: Duration::from_secs(defaults::EVENT_STREAM_MAX_AGE_S),
            }
        );
        let mut l = minimal();
        l.http_request_timeout_ms = Some(1000);
        assert!(
            Config::resolve(l).is_err(),
            "below the node's request timeout"
        );
        let mut l = minimal();
        l.http_max_connections = Some(0);
        assert!(Config::resolve(l).is_err());
    }

    #[test]
    fn request_ids_are_kept_a_day_by_default_and_a_shorter_window_refuses_to_start() {
        let c = Config::resolve(minimal()).unwrap();
        assert_eq!(c.request_pruning.retention(), Duration::from_secs(86_400));
        let file: ConfigLayer = toml::from_str("request_retention_s = 172800").unwrap();
        let c = Config::resolve(minimal().over(file)).unwrap();
        assert_eq!(c.request_pruning.retention(), Duration::from_secs(172_800));
        let mut l = minimal();
        l.db_path = Some("n1.db".into());
        l.request_retention_s = Some(90_000);
        let engine = Config::resolve(l).unwrap().database().unwrap();
        assert_eq!(
            engine.prune.map(|p| p.retention()),
            Some(Duration::from_secs(90_000))
        );
        for short in [0, 3600, 86_399] {
            let mut l = minimal();
            l.request_retention_s = Some(short);
            match Config::resolve(l) {
                Err(Error::InvalidInput(m)) => assert!(
                    m.starts_with("--request-retention-s:") && m.contains("86400 s (24 h"),
                    "{m}"
                ),
                other => panic!("a retention of {short} s was accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn the_request_retention_parses_from_the_command_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            layer: ConfigLayer,
        }
        let cli = Cli::try_parse_from(["node", "--request-retention-s", "604800"]).unwrap();
        assert_eq!(cli.layer.request_retention_s, Some(604_800));
        assert!(Cli::try_parse_from(["node", "--request-retention-s", "-1"]).is_err());
    }

    #[test]
    fn db_path_is_relative_to_data_dir() {
        let mut l = minimal();
        l.data_dir = Some("/var/lib/cc".into());
        l.db_path = Some("n1.db".into());
        assert_eq!(
            Config::resolve(l).unwrap().db_path,
            Some(PathBuf::from("/var/lib/cc/n1.db"))
        );
    }
}
