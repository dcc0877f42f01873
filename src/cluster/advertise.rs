//! Does the address this node advertises lead back to it?
//!
//! Peers dial exactly the `host:port` a node advertises (`--advertise-addr`). In containers and
//! on multi-host networks the usual mistakes are a name that does not resolve, or an address
//! that only means something on the node itself (`127.0.0.1` while the peers run elsewhere).
//! Peers then fail to connect, and nothing in this node's log says why. So, once at start and
//! before the NodeServer binds the cluster port, the node checks its own advertised address:
//!
//! ```text
//!  resolve host ──▶ loopback while a seed is not? ──▶ bind the cluster port, dial the
//!  (fails: warn)     (warn: peers would dial         advertised address, accept: is the
//!                     themselves)                    caller us? (no answer / someone else: warn)
//! ```
//!
//! Whatever is wrong is said in one warning line ([`probe`] returns it; `node` logs it).
//!
//! Deliberately not here: refusing to start (a name may resolve a moment later, e.g. while a
//! container's DNS entry is registered, and NAT can make an address work for peers that this
//! node cannot hairpin to), retrying, or checking from the peers' side — only they can.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, lookup_host};

use crate::config::split_host_port;

/// How long each step of the probe (resolve, connect, accept) may take. Short: the probe runs
/// before the node starts, and a warning is all it can produce.
pub const PROBE_STEP_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a host part names the loopback interface.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The problem with advertising `resolved` (what `advertise` resolved to) when the node joins
/// through `seeds`: only loopback addresses while some seed is on another host means every
/// peer there would dial itself.
pub fn loopback_problem(
    advertise: &str,
    resolved: &[SocketAddr],
    seeds: &[String],
) -> Option<String> {
    let all_loopback = !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback());
    let remote_seed = seeds
        .iter()
        .filter_map(|s| split_host_port(s))
        .find(|(host, _)| !is_loopback_host(host));
    match (all_loopback, remote_seed) {
        (true, Some((host, _))) => Some(format!(
            "advertised address {advertise} is loopback but seed {host} is not: peers on other hosts cannot dial this node; set --advertise-addr to an address they reach"
        )),
        _ => None,
    }
}

/// Checks that `advertise` resolves and leads to a listener on `bind` (the cluster address this
/// node is about to bind), and is not loopback-only while `seeds` are remote. Returns the one
/// warning line to log, or `None` when all is well or the probe cannot tell (port 0, or the
/// port is taken: the NodeServer then reports that itself).
pub async fn probe(bind: SocketAddr, advertise: &str, seeds: &[String]) -> Option<String> {
    let resolved: Vec<SocketAddr> =
        match tokio::time::timeout(PROBE_STEP_TIMEOUT, lookup_host(advertise)).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Some(unreachable(advertise, &format!("does not resolve: {e}"))),
            Err(_) => return Some(unreachable(advertise, "did not resolve within 1 s")),
        };
    if resolved.is_empty() {
        return Some(unreachable(advertise, "resolves to no address"));
    }
    if let Some(problem) = loopback_problem(advertise, &resolved, seeds) {
        return Some(problem);
    }
    if bind.port() == 0 || resolved.iter().any(|a| a.port() == 0) {
        return None;
    }
    let listener = TcpListener::bind(bind).await.ok()?;
    dial_self(&listener, &resolved)
        .await
        .err()
        .map(|why| unreachable(advertise, &why))
}

/// Dials `resolved` and accepts on `listener`: Ok when the connection that arrives is ours.
async fn dial_self(listener: &TcpListener, resolved: &[SocketAddr]) -> Result<(), String> {
    let stream = match tokio::time::timeout(PROBE_STEP_TIMEOUT, TcpStream::connect(resolved)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("refuses connections from this node: {e}")),
        Err(_) => return Err("does not answer this node within 1 s".into()),
    };
    let ours = stream.local_addr().map_err(|e| e.to_string())?;
    match tokio::time::timeout(PROBE_STEP_TIMEOUT, listener.accept()).await {
        Ok(Ok((_, peer))) if peer == ours => Ok(()),
        _ => Err(format!(
            "leads to another listener, not this node's cluster port {}",
            listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        )),
    }
}

fn unreachable(advertise: &str, why: &str) -> String {
    format!(
        "advertised address {advertise} {why}: peers cannot dial this node; set --advertise-addr to a host:port they reach"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn free_bind() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn loopback_advertised_with_a_remote_seed_is_a_problem() {
        let seeds = vec!["n1:4701".to_owned()];
        let w = loopback_problem("127.0.0.1:4702", &[addr("127.0.0.1:4702")], &seeds).unwrap();
        assert!(w.contains("127.0.0.1:4702") && w.contains("n1"), "{w}");
    }

    #[test]
    fn loopback_advertised_with_loopback_seeds_or_none_is_fine() {
        let local = vec!["127.0.0.1:4701".to_owned(), "localhost:4703".to_owned()];
        let resolved = [addr("127.0.0.1:4702")];
        assert_eq!(loopback_problem("127.0.0.1:4702", &resolved, &local), None);
        assert_eq!(loopback_problem("127.0.0.1:4702", &resolved, &[]), None);
    }

    #[test]
    fn a_routable_advertised_address_with_remote_seeds_is_fine() {
        let seeds = vec!["10.0.0.1:4701".to_owned()];
        let resolved = [addr("10.0.0.2:4702")];
        assert_eq!(loopback_problem("10.0.0.2:4702", &resolved, &seeds), None);
    }

    #[tokio::test]
    async fn an_advertised_address_that_leads_to_our_cluster_port_passes() {
        let bind = free_bind();
        assert_eq!(probe(bind, &bind.to_string(), &[]).await, None);
    }

    #[tokio::test]
    async fn an_advertised_name_that_does_not_resolve_is_reported() {
        let bind = free_bind();
        let w = probe(bind, "no-such-host.invalid:4701", &[]).await.unwrap();
        assert!(
            w.contains("no-such-host.invalid:4701") && w.contains("resolve"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn an_advertised_port_where_nothing_listens_is_reported() {
        let bind = free_bind();
        let elsewhere = free_bind();
        let w = probe(bind, &elsewhere.to_string(), &[]).await.unwrap();
        assert!(
            w.contains(&elsewhere.to_string()) && w.contains("refuses"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn an_advertised_port_held_by_another_listener_is_reported() {
        let bind = free_bind();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_addr = other.local_addr().unwrap().to_string();
        let w = probe(bind, &other_addr, &[]).await.unwrap();
        assert!(w.contains("another listener"), "{w}");
    }
}
