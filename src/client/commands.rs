//! The CLI client commands: create / get / list / update / delete / status.
//!
//! Human-readable output by default, the node's JSON with `--json` (for scripts). Any failure
//! is one line on stderr and a non-zero exit code (the policy is in [`super::exit`]).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use serde_json::{Map, Value, json};

use super::exit::Ending;
use super::text::{json_shown, shown};
use super::{ClientError, HttpClient, HttpResponse, customer_path};
use crate::api::model::{ClusterJson, CustomerJson};

/// Options shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// URL of any node's HTTP API: `https://host:port` (a TLS proxy in front of the node), or
    /// `http://` on this host's loopback (any other host needs --insecure-http).
    #[arg(long, env = "CUSTOMER_CLUSTER_NODE", default_value = super::DEFAULT_NODE_URL)]
    pub node: String,
    /// Bearer token for /v1 (when the node requires one). Prefer --token-file: a command-line
    /// argument is readable by every local user in the process list.
    #[arg(long, env = "CUSTOMER_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored). Excludes --token.
    #[arg(long, env = "CUSTOMER_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for an https:// node instead of the public
    /// web roots (a private CA) [default: the public roots built in].
    #[arg(long, env = "CUSTOMER_CLUSTER_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain http:// to a host other than the loopback: the token and customer data then
    /// cross the network in cleartext. Only on a network you trust.
    #[arg(
        long,
        env = "CUSTOMER_CLUSTER_INSECURE_HTTP",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub insecure_http: bool,
    /// Print the node's JSON instead of a human-readable view.
    #[arg(long)]
    pub json: bool,
    /// Per-request deadline in ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl ClientOpts {
    /// A client for `--node`. When that is the default URL and `CUSTOMER_CLUSTER_NODE` is not
    /// set, a failure to connect says how to point the CLI at a cluster.
    pub fn client(&self) -> Result<HttpClient, ClientError> {
        self.client_given_env(std::env::var("CUSTOMER_CLUSTER_NODE").ok().as_deref())
    }

    /// [`ClientOpts::client`] with the value of `CUSTOMER_CLUSTER_NODE` passed in.
    fn client_given_env(&self, env_node: Option<&str>) -> Result<HttpClient, ClientError> {
        let client = HttpClient::with_ca_file(
            &self.node,
            self.token()?,
            Duration::from_millis(self.timeout_ms),
            self.ca_file.as_deref(),
        )?;
        super::transport::check_cleartext(client.base(), self.insecure_http)?;
        Ok(client.with_connect_hint(unconfigured_hint(&self.node, env_node)))
    }

    /// The bearer token: `--token`, or the contents of `--token-file`; giving both is an error
    /// (either may come from its environment variable), and so is an unreadable or empty file.
    pub fn token(&self) -> Result<Option<String>, ClientError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ClientError::Local(
                "give either --token (CUSTOMER_CLUSTER_TOKEN) or --token-file (CUSTOMER_CLUSTER_TOKEN_FILE), not both".into(),
            )),
            (token, None) => Ok(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ClientError::Local(format!("cannot read --token-file {}: {e}", path.display()))
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ClientError::Local(format!(
                        "--token-file {} is empty",
                        path.display()
                    )));
                }
                Ok(Some(token.to_owned()))
            }
        }
    }
}

/// What to tell someone whose CLI fell back to the default node URL and found nothing there:
/// most likely they started a cluster with `scripts/cluster.sh` (whose env file names its
/// node and token) or run nodes elsewhere. `None` when a node was configured through the
/// environment or a `--node` other than the default; an explicit `--node` equal to the
/// default gets the hint too, which is still true advice.
pub fn unconfigured_hint(node: &str, env_node: Option<&str>) -> Option<String> {
    if env_node.is_some_and(|n| !n.trim().is_empty()) || node != super::DEFAULT_NODE_URL {
        return None;
    }
    Some(format!(
        "no node was configured, so the CLI tried the default {}. For a cluster started with \
         scripts/cluster.sh run `source run/env` (it sets CUSTOMER_CLUSTER_NODE and \
         CUSTOMER_CLUSTER_TOKEN); otherwise pass --node URL or set CUSTOMER_CLUSTER_NODE.",
        super::DEFAULT_NODE_URL
    ))
}

/// `create`
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Customer name.
    #[arg(long)]
    pub name: String,
    /// Email address (unique).
    #[arg(long)]
    pub email: String,
    /// Phone number.
    #[arg(long)]
    pub phone: Option<String>,
    /// Postal address.
    #[arg(long)]
    pub address: Option<String>,
    /// Choose the id yourself (UUID): makes retrying the same create safe.
    #[arg(long)]
    pub id: Option<String>,
}

/// `get`
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// Customer id.
    pub id: String,
}

/// `list`
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Page size (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this id (the `next` cursor of the previous page).
    #[arg(long)]
    pub after: Option<String>,
    /// Follow `next` until the last page.
    #[arg(long)]
    pub all: bool,
}

/// `update` (a JSON merge patch of the given fields)
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    /// Customer id.
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New email.
    #[arg(long)]
    pub email: Option<String>,
    /// New phone.
    #[arg(long, conflicts_with = "clear_phone")]
    pub phone: Option<String>,
    /// New address.
    #[arg(long, conflicts_with = "clear_address")]
    pub address: Option<String>,
    /// Remove the phone number.
    #[arg(long)]
    pub clear_phone: bool,
    /// Remove the address.
    #[arg(long)]
    pub clear_address: bool,
    /// Only update if the current version is this one (optimistic concurrency): `2`, or the
    /// node's own ETag form `"2"` (`W/"2"` too, as the node reads it).
    #[arg(long, value_name = "VERSION", value_parser = parse_if_match)]
    pub if_match: Option<u64>,
}

/// `delete`
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// Customer id.
    pub id: String,
    /// Only delete if the current version is this one: `2`, `"2"` or `W/"2"`.
    #[arg(long, value_name = "VERSION", value_parser = parse_if_match)]
    pub if_match: Option<u64>,
}

/// Reads an `--if-match` version as people copy it: `2`, or the ETag the node sent, `"2"`.
/// `W/"2"` is accepted too and means the same version: the node reads `If-Match` that way
/// (its ETags are versions, so a weak tag names the same version) and the CLI must not refuse
/// what the node accepts. Anything else (`*`, two tags, text) is refused with the forms that
/// work.
pub fn parse_if_match(raw: &str) -> Result<u64, String> {
    let trimmed = raw.trim();
    let tag = trimmed.strip_prefix("W/").unwrap_or(trimmed);
    let version = match tag.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(tag),
    };
    version
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("expected a version like 2 or the ETag \"2\", got {raw}"))
}

/// `ping`
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// Member to ping (from the node given by --node).
    pub target: String,
    /// Sequential pings to send, 1..=1000 (the server's bound).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
}

/// `status`
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<u64>,
}

/// Runs `create`.
pub async fn create(opts: &ClientOpts, args: &CreateArgs) -> Result<String, ClientError> {
    let mut body = json!({"name": args.name, "email": args.email});
    for (k, v) in [
        ("phone", &args.phone),
        ("address", &args.address),
        ("id", &args.id),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let r = opts
        .client()?
        .json(Method::POST, "/v1/customers", &body, &[])
        .await?
        .ok()?;
    render_customer(opts, &r)
}

/// Runs `get`.
pub async fn get(opts: &ClientOpts, args: &GetArgs) -> Result<String, ClientError> {
    let r = opts.client()?.get(&customer_path(&args.id)).await?.ok()?;
    render_customer(opts, &r)
}

/// Runs `where`: the customer's shard, owner and lease as the cluster sees them.
pub async fn where_is(opts: &ClientOpts, args: &GetArgs) -> Result<String, ClientError> {
    let path = format!("{}/placement", customer_path(&args.id));
    let r = opts.client()?.get(&path).await?.ok()?;
    if opts.json {
        return Ok(body_text(&r));
    }
    Ok(render_placement(&r.json()?))
}

/// A placement as text.
pub fn render_placement(p: &crate::api::model::PlacementJson) -> String {
    let mut out = format!(
        "customer {} is in shard {}, placed on {}\n",
        shown(&p.id),
        p.shard,
        shown(p.owner.as_deref().unwrap_or("(no member)"))
    );
    for l in &p.leases {
        let token = l.token.map_or("-".into(), |t| t.to_string());
        let left = l.valid_for_ms.map_or("-".into(), |ms| format!("{ms} ms"));
        let _ = writeln!(
            out,
            "  {}: lease {} (token {token}, valid for {left}), holder per its table: {}, actor {}",
            shown(&l.node),
            shown(&l.state),
            shown(l.holder.as_deref().unwrap_or("none")),
            if l.actor_active {
                "active"
            } else {
                "not active"
            },
        );
    }
    out.trim_end().to_owned()
}

/// Runs `update`.
pub async fn update(opts: &ClientOpts, args: &UpdateArgs) -> Result<String, ClientError> {
    let mut patch = Map::new();
    for (k, v) in [
        ("name", &args.name),
        ("email", &args.email),
        ("phone", &args.phone),
        ("address", &args.address),
    ] {
        if let Some(v) = v {
            patch.insert(k.into(), json!(v));
        }
    }
    if args.clear_phone {
        patch.insert("phone".into(), Value::Null);
    }
    if args.clear_address {
        patch.insert("address".into(), Value::Null);
    }
    if patch.is_empty() {
        return Err(ClientError::Local(
            "nothing to update: give at least one of --name --email --phone --address --clear-phone --clear-address".into(),
        ));
    }
    let etag = args.if_match.map(|v| format!("\"{v}\""));
    let mut headers = vec![("content-type", "application/merge-patch+json")];
    if let Some(e) = &etag {
        headers.push(("if-match", e.as_str()));
    }
    let r = opts
        .client()?
        .json(
            Method::PATCH,
            &customer_path(&args.id),
            &Value::Object(patch),
            &headers,
        )
        .await?
        .ok()?;
    render_customer(opts, &r)
}

/// Runs `delete`.
pub async fn delete(opts: &ClientOpts, args: &DeleteArgs) -> Result<String, ClientError> {
    let etag = args.if_match.map(|v| format!("\"{v}\""));
    let headers: Vec<(&str, &str)> = etag.iter().map(|e| ("if-match", e.as_str())).collect();
    let r = opts
        .client()?
        .send(Method::DELETE, &customer_path(&args.id), None, &headers)
        .await?
        .ok()?;
    if opts.json {
        return Ok(json_shown(&json!({"deleted": args.id}).to_string()).into_owned());
    }
    Ok(format!(
        "deleted {} (owner {})",
        args.id,
        r.header("x-owner-node").unwrap_or("?")
    ))
}

/// Runs `list`.
pub async fn list(opts: &ClientOpts, args: &ListArgs) -> Result<String, ClientError> {
    let client = opts.client()?;
    let mut after = args.after.clone();
    let mut items = Vec::new();
    let mut next;
    loop {
        let page = client.list_page(args.limit, after.as_deref()).await?;
        items.extend(page.items);
        next = page.next;
        if !args.all || next.is_none() {
            break;
        }
        after = next.clone();
    }
    if opts.json {
        return Ok(json_shown(&json!({"items": items, "next": next}).to_string()).into_owned());
    }
    let mut out = format!(
        "{:<36}  {:>7}  {:<30}  {}\n",
        "ID", "VERSION", "EMAIL", "NAME"
    );
    for c in &items {
        let _ = writeln!(
            out,
            "{:<36}  {:>7}  {:<30}  {}",
            shown(&c.id),
            c.version,
            shown(&c.email),
            shown(&c.name)
        );
    }
    let _ = write!(out, "{} customer(s)", items.len());
    if let Some(n) = next.as_deref().map(shown) {
        let _ = write!(out, "; more after {n} (use --after {n} or --all)");
    }
    Ok(out)
}

/// Runs `ping`: round trips of a bare heartbeat ping from `--node` to the target member.
pub async fn ping(opts: &ClientOpts, args: &PingArgs) -> Result<String, ClientError> {
    let path = format!(
        "/v1/cluster/ping/{}?count={}",
        super::encode_segment(&args.target),
        args.count
    );
    let r = opts.client()?.get(&path).await?.ok()?;
    if opts.json {
        return Ok(body_text(&r));
    }
    let v: serde_json::Value = r.json()?;
    let line = format!(
        "{} -> {}: {} pings, p50 {} µs, p99 {} µs, max {} µs, mean {} µs",
        r.header("x-entry-node").unwrap_or("?"),
        args.target,
        v["count"],
        v["p50_us"],
        v["p99_us"],
        v["max_us"],
        v["mean_us"]
    );
    Ok(shown(&line).into_owned())
}

/// Runs `status`: once, or with `--watch` again and again until interrupted. On a terminal
/// the screen is cleared before each table; into a pipe or a file the tables follow each
/// other with no control codes. A refresh that fails shows its error in place of the table
/// and the watch goes on (a node restarting is what one watches for); a reader that goes away
/// (`| head`) ends it quietly.
pub async fn status_command(opts: &ClientOpts, args: &StatusArgs) -> Ending {
    let Some(secs) = args.watch else {
        return Ending::line(status(opts).await);
    };
    let period = watch_period(secs);
    let clear = std::io::stdout().is_terminal();
    loop {
        let ending = Ending::line(status(opts).await);
        let written = {
            let mut out = std::io::stdout().lock();
            refresh(&mut out, &mut std::io::stderr().lock(), &ending, clear)
        };
        if let Err(e) = written {
            return super::exit::after_write_error(&e);
        }
        tokio::time::sleep(period).await;
    }
}

/// ANSI "clear the screen, cursor home": only ever written to a terminal.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// Writes one `status --watch` refresh: the clear-screen codes when `clear` (stdout is a
/// terminal), then the table or the error.
pub fn refresh(
    out: &mut dyn Write,
    err: &mut dyn Write,
    ending: &Ending,
    clear: bool,
) -> std::io::Result<()> {
    if clear {
        out.write_all(CLEAR_SCREEN.as_bytes())?;
    }
    ending.write_to(out, err)
}

/// The pause between two `status --watch` refreshes: as asked, but at least a second, so a
/// `--watch 0` does not hammer the node.
pub fn watch_period(secs: u64) -> Duration {
    Duration::from_secs(secs.max(1))
}

/// Runs `status` once.
pub async fn status(opts: &ClientOpts) -> Result<String, ClientError> {
    let r = opts.client()?.get("/v1/cluster").await?.ok()?;
    if opts.json {
        return Ok(body_text(&r));
    }
    Ok(render_cluster(&r.json()?))
}

/// A cluster view as a table.
pub fn render_cluster(c: &ClusterJson) -> String {
    let mut out = format!(
        "cluster as seen by {} (placement epoch {}, {} member(s))\n",
        shown(&c.node),
        c.epoch,
        c.members.len()
    );
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:<3} {:>7} {:>8} {:>7}  {:<21}  CLUSTER",
        "NODE", "STATUS", "DB", "OWNED", "ACTIVE", "LEASES", "HTTP"
    );
    for m in &c.members {
        let name = if m.this_node {
            format!("{}*", shown(&m.name))
        } else {
            shown(&m.name).into_owned()
        };
        let active = m.active_customers.map_or("-".into(), |a| a.to_string());
        let leases = m.leases_held.map_or("-".into(), |a| a.to_string());
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<3} {:>6.1}% {:>8} {:>7}  {:<21}  {}",
            name,
            shown(&m.status),
            if m.db { "yes" } else { "no" },
            m.owned_share * 100.0,
            active,
            leases,
            shown(&m.http_addr),
            shown(&m.cluster_addr)
        );
    }
    let dbs = if c.db_members.is_empty() {
        "NONE (writes and reads will fail with 503)".to_owned()
    } else {
        shown(&c.db_members.join(", ")).into_owned()
    };
    let _ = write!(out, "database: {dbs}\n* = the node that answered");
    out
}

/// A node's JSON answer as `--json` prints it: its text, with raw control characters JSON-escaped
/// ([`json_shown`]).
fn body_text(r: &HttpResponse) -> String {
    json_shown(&String::from_utf8_lossy(&r.body)).into_owned()
}

fn render_customer(opts: &ClientOpts, r: &HttpResponse) -> Result<String, ClientError> {
    if opts.json {
        return Ok(body_text(r));
    }
    Ok(render_customer_text(&r.json()?, r))
}

/// One customer as text, every field escaped for the terminal ([`shown`]).
fn render_customer_text(c: &CustomerJson, r: &HttpResponse) -> String {
    let dash = |v: &Option<String>| shown(v.as_deref().unwrap_or("-")).into_owned();
    format!(
        "id:         {}\nname:       {}\nemail:      {}\nphone:      {}\naddress:    {}\nversion:    {}\ncreated_at: {}\nupdated_at: {}\nserved by:  {} (entry {})",
        shown(&c.id),
        shown(&c.name),
        shown(&c.email),
        dash(&c.phone),
        dash(&c.address),
        c.version,
        shown(&c.created_at),
        shown(&c.updated_at),
        r.header("x-owner-node").unwrap_or("?"),
        r.header("x-entry-node").unwrap_or("?"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::MemberJson;

    #[test]
    fn only_a_cli_left_on_the_default_node_hints_at_source_run_env() {
        let hint = unconfigured_hint(crate::client::DEFAULT_NODE_URL, None).unwrap();
        assert!(hint.contains("source run/env"), "{hint}");
        assert!(
            hint.contains("--node URL") && hint.contains("CUSTOMER_CLUSTER_NODE"),
            "{hint}"
        );
        assert_eq!(unconfigured_hint("http://127.0.0.1:18081", None), None);
        assert_eq!(
            unconfigured_hint(
                crate::client::DEFAULT_NODE_URL,
                Some("http://127.0.0.1:8081")
            ),
            None
        );
        assert!(unconfigured_hint(crate::client::DEFAULT_NODE_URL, Some("")).is_some());
        let opts = |node: &str| ClientOpts {
            node: node.into(),
            token: None,
            token_file: None,
            ca_file: None,
            insecure_http: false,
            json: false,
            timeout_ms: 1000,
        };
        let defaulted = opts(crate::client::DEFAULT_NODE_URL);
        assert!(
            defaulted
                .client_given_env(None)
                .unwrap()
                .connect_hint
                .is_some()
        );
        let given = opts("127.0.0.1:18081");
        assert!(given.client_given_env(None).unwrap().connect_hint.is_none());
    }

    #[test]
    fn the_token_comes_from_the_flag_or_from_its_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").unwrap();
        let opts = |token: Option<&str>, token_file: Option<PathBuf>| ClientOpts {
            node: "127.0.0.1:1".into(),
            token: token.map(str::to_owned),
            token_file,
            ca_file: None,
            insecure_http: false,
            json: false,
            timeout_ms: 1000,
        };
        assert_eq!(
            opts(None, Some(file.clone())).token().unwrap().as_deref(),
            Some("s3cret-token")
        );
        assert_eq!(opts(Some("t"), None).token().unwrap().as_deref(), Some("t"));
        assert_eq!(opts(None, None).token().unwrap(), None);
        let both = opts(Some("t"), Some(file)).token().unwrap_err().to_string();
        assert!(both.contains("not both"), "{both}");
        let missing = dir.path().join("missing");
        let err = opts(None, Some(missing)).token().unwrap_err().to_string();
        assert!(
            err.contains("cannot read --token-file") && err.contains("missing"),
            "{err}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = opts(None, Some(empty)).token().unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn if_match_takes_the_version_bare_or_as_the_etag_the_node_sent() {
        assert_eq!(parse_if_match("2"), Ok(2));
        assert_eq!(parse_if_match("\"2\""), Ok(2));
        assert_eq!(parse_if_match("W/\"2\""), Ok(2));
        assert_eq!(parse_if_match(" \"17\" "), Ok(17));
        for bad in [
            "",
            "*",
            "\"2",
            "2\"",
            "\"\"",
            "\"x\"",
            "\"1\", \"2\"",
            "-1",
            "W/2x",
        ] {
            let err = parse_if_match(bad).unwrap_err();
            assert!(err.contains("like 2 or the ETag \"2\""), "{bad}: {err}");
        }
    }

    #[test]
    fn a_watch_refresh_clears_the_screen_only_on_a_terminal() {
        let ending = Ending::Done("cluster as seen by n1\n".into());
        let mut piped = Vec::new();
        refresh(&mut piped, &mut Vec::new(), &ending, false).unwrap();
        assert_eq!(piped, b"cluster as seen by n1\n");
        let mut tty = Vec::new();
        refresh(&mut tty, &mut Vec::new(), &ending, true).unwrap();
        assert!(tty.starts_with(CLEAR_SCREEN.as_bytes()));
        assert!(tty.ends_with(b"cluster as seen by n1\n"));
    }

    #[test]
    fn a_customer_with_terminal_escapes_is_printed_with_them_escaped() {
        let c = CustomerJson {
            id: "0190".into(),
            name: "\u{1b}]0;pwned\u{7}\u{1b}[31mAlice\u{202E}cba".into(),
            email: "not-an-email".into(),
            phone: Some("\u{1b}[2J".into()),
            address: Some("1 Main St\nversion:    99".into()),
            version: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        };
        let r = HttpResponse {
            status: hyper::StatusCode::OK,
            headers: hyper::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        let text = render_customer_text(&c, &r);
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && super::super::text::is_unsafe_on_terminal(c)),
            "{text:?}"
        );
        assert!(
            text.contains("name:       \\u{1b}]0;pwned\\u{7}\\u{1b}[31mAlice\\u{202e}cba\n"),
            "{text}"
        );
        assert!(text.contains("phone:      \\u{1b}[2J\n"), "{text}");
        // A newline inside a field does not start a line of its own.
        assert_eq!(
            text.lines().filter(|l| l.starts_with("version:")).count(),
            1,
            "{text}"
        );
        assert!(text.contains("1 Main St\\u{a}version:    99"), "{text}");
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(customer_path("a/b c"), "/v1/customers/a%2Fb%20c");
    }

    #[test]
    fn a_status_watch_refreshes_as_asked_but_at_most_once_a_second() {
        assert_eq!(watch_period(0), Duration::from_secs(1));
        assert_eq!(watch_period(1), Duration::from_secs(1));
        assert_eq!(watch_period(5), Duration::from_secs(5));
    }

    #[test]
    fn the_status_table_marks_this_node_and_a_missing_database() {
        let c = ClusterJson {
            node: "n1".into(),
            epoch: 3,
            members: vec![MemberJson {
                name: "n1".into(),
                cluster_addr: "127.0.0.1:4701".into(),
                http_addr: "127.0.0.1:8081".into(),
                db: false,
                owned_share: 1.0,
                active_customers: Some(4),
                leases_held: Some(12),
                status: "up".into(),
                this_node: true,
            }],
            db_members: vec![],
        };
        let t = render_cluster(&c);
        assert!(t.contains("n1*"), "{t}");
        assert!(t.contains("100.0%"), "{t}");
        assert!(t.contains("NONE"), "{t}");
        assert!(t.contains("LEASES") && t.contains(" 12 "), "{t}");
    }

    #[test]
    fn a_placement_names_the_shard_owner_and_each_nodes_lease() {
        use crate::api::model::{LeaseJson, PlacementJson};
        let p = PlacementJson {
            id: "c1".into(),
            shard: 513,
            owner: Some("n2".into()),
            leases: vec![LeaseJson {
                node: "n2".into(),
                state: "held".into(),
                token: Some(7),
                valid_for_ms: Some(1400),
                holder: Some("n2".into()),
                actor_active: true,
            }],
        };
        let t = render_placement(&p);
        assert!(t.contains("shard 513, placed on n2"), "{t}");
        assert!(
            t.contains("n2: lease held (token 7, valid for 1400 ms)"),
            "{t}"
        );
        assert!(t.contains("actor active"), "{t}");
    }
}
