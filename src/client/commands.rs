//! The CLI client commands: create / get / list / update / delete / status.
//!
//! Human-readable output by default, the node's JSON with `--json` (for scripts). Any failure
//! is one line on stderr and a non-zero exit code (the policy is in [`super::exit`]).

use std::fmt::Write as _;
use std::time::Duration;

use hyper::Method;
use serde_json::{Map, Value, json};

use super::exit::Ending;
use super::{ClientError, HttpClient, HttpResponse, customer_path};
use crate::api::model::{ClusterJson, CustomerJson};

/// Options shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// URL of any node's HTTP API.
    #[arg(long, env = "CUSTOMER_CLUSTER_NODE", default_value = super::DEFAULT_NODE_URL)]
    pub node: String,
    /// Bearer token for /v1 (when the node requires one).
    #[arg(long, env = "CUSTOMER_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the node's JSON instead of a human-readable view.
    #[arg(long)]
    pub json: bool,
    /// Per-request deadline in ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl ClientOpts {
    /// A client for `--node`.
    pub fn client(&self) -> Result<HttpClient, ClientError> {
        HttpClient::new(
            &self.node,
            self.token.clone(),
            Duration::from_millis(self.timeout_ms),
        )
    }
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
    /// Only update if the current version is this one (optimistic concurrency).
    #[arg(long)]
    pub if_match: Option<u64>,
}

/// `delete`
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// Customer id.
    pub id: String,
    /// Only delete if the current version is this one.
    #[arg(long)]
    pub if_match: Option<u64>,
}

/// `ping`
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// Member to ping (from the node given by --node).
    pub target: String,
    /// Sequential pings to send.
    #[arg(long, default_value_t = 1000)]
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
        return Ok(String::from_utf8_lossy(&r.body).into_owned());
    }
    Ok(render_placement(&r.json()?))
}

/// A placement as text.
pub fn render_placement(p: &crate::api::model::PlacementJson) -> String {
    let mut out = format!(
        "customer {} is in shard {}, placed on {}\n",
        p.id,
        p.shard,
        p.owner.as_deref().unwrap_or("(no member)")
    );
    for l in &p.leases {
        let token = l.token.map_or("-".into(), |t| t.to_string());
        let left = l.valid_for_ms.map_or("-".into(), |ms| format!("{ms} ms"));
        let _ = writeln!(
            out,
            "  {}: lease {} (token {token}, valid for {left}), holder per its table: {}, actor {}",
            l.node,
            l.state,
            l.holder.as_deref().unwrap_or("none"),
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
        return Ok(json!({"deleted": args.id}).to_string());
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
        return Ok(json!({"items": items, "next": next}).to_string());
    }
    let mut out = format!(
        "{:<36}  {:>7}  {:<30}  {}\n",
        "ID", "VERSION", "EMAIL", "NAME"
    );
    for c in &items {
        let _ = writeln!(
            out,
            "{:<36}  {:>7}  {:<30}  {}",
            c.id, c.version, c.email, c.name
        );
    }
    let _ = write!(out, "{} customer(s)", items.len());
    if let Some(n) = next {
        let _ = write!(out, "; more after {n} (use --after {n} or --all)");
    }
    Ok(out)
}

/// Runs `ping`: round trips of a bare Registry ping from `--node` to the target member.
pub async fn ping(opts: &ClientOpts, args: &PingArgs) -> Result<String, ClientError> {
    let path = format!(
        "/v1/cluster/ping/{}?count={}",
        super::encode_segment(&args.target),
        args.count
    );
    let r = opts.client()?.get(&path).await?.ok()?;
    if opts.json {
        return Ok(String::from_utf8_lossy(&r.body).into_owned());
    }
    let v: serde_json::Value = r.json()?;
    Ok(format!(
        "{} -> {}: {} pings, p50 {} µs, p99 {} µs, max {} µs, mean {} µs",
        r.header("x-entry-node").unwrap_or("?"),
        args.target,
        v["count"],
        v["p50_us"],
        v["p99_us"],
        v["max_us"],
        v["mean_us"]
    ))
}

/// Runs `status`: once, or with `--watch` again and again until interrupted, clearing the
/// screen before each table. A refresh that fails shows its error in place of the table and
/// the watch goes on (a node restarting is what one watches for).
pub async fn status_command(opts: &ClientOpts, args: &StatusArgs) -> Ending {
    let Some(secs) = args.watch else {
        return Ending::line(status(opts).await);
    };
    let period = watch_period(secs);
    loop {
        let ending = Ending::line(status(opts).await);
        print!("\x1b[2J\x1b[H");
        ending.print();
        tokio::time::sleep(period).await;
    }
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
        return Ok(String::from_utf8_lossy(&r.body).into_owned());
    }
    Ok(render_cluster(&r.json()?))
}

/// A cluster view as a table.
pub fn render_cluster(c: &ClusterJson) -> String {
    let mut out = format!(
        "cluster as seen by {} (placement epoch {}, {} member(s))\n",
        c.node,
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
            format!("{}*", m.name)
        } else {
            m.name.clone()
        };
        let active = m.active_customers.map_or("-".into(), |a| a.to_string());
        let leases = m.leases_held.map_or("-".into(), |a| a.to_string());
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<3} {:>6.1}% {:>8} {:>7}  {:<21}  {}",
            name,
            m.status,
            if m.db { "yes" } else { "no" },
            m.owned_share * 100.0,
            active,
            leases,
            m.http_addr,
            m.cluster_addr
        );
    }
    let dbs = if c.db_members.is_empty() {
        "NONE (writes and reads will fail with 503)".to_owned()
    } else {
        c.db_members.join(", ")
    };
    let _ = write!(out, "database: {dbs}\n* = the node that answered");
    out
}

fn render_customer(opts: &ClientOpts, r: &HttpResponse) -> Result<String, ClientError> {
    if opts.json {
        return Ok(String::from_utf8_lossy(&r.body).into_owned());
    }
    let c: CustomerJson = r.json()?;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    Ok(format!(
        "id:         {}\nname:       {}\nemail:      {}\nphone:      {}\naddress:    {}\nversion:    {}\ncreated_at: {}\nupdated_at: {}\nserved by:  {} (entry {})",
        c.id,
        c.name,
        c.email,
        dash(&c.phone),
        dash(&c.address),
        c.version,
        c.created_at,
        c.updated_at,
        r.header("x-owner-node").unwrap_or("?"),
        r.header("x-entry-node").unwrap_or("?"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::MemberJson;

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
