//! Workload helpers the namespace fault tests share (`tests/faults.rs`, `tests/fault_hooks.rs`):
//! clients, recorded requests sent until served, and ids that move between chosen nodes.

use std::time::Duration;

use customer_cluster::client::HttpClient;
use customer_cluster::cluster::placement::{Member, Ring};
use customer_cluster::customer::new_customer_id;
use customer_cluster::faults::checker::{Outcome, Reply};
use customer_cluster::faults::history::{Recorded, Recorder, Request, is_served};

use super::wait_until;

/// Clients for each URL with one timeout.
pub fn clients(urls: &[String], timeout: Duration) -> Vec<HttpClient> {
    urls.iter()
        .map(|u| HttpClient::new(u, None, timeout).expect("client"))
        .collect()
}

/// Sends `request` on `key` through `entries` in turn (recorded, as client `client`) until
/// the answer is a definite one; returns that record.
pub async fn until_served(
    recorder: &Recorder,
    entries: &[(usize, &HttpClient)],
    client: u32,
    key: &str,
    request: &Request,
    timeout: Duration,
) -> Recorded {
    let what = format!("{request:?} on {key} served");
    let mut turn = 0;
    wait_until(&what, timeout, || {
        turn += 1;
        let (entry, http) = entries[turn % entries.len()];
        async move {
            let r = recorder.send(http, entry, client, key, request).await;
            is_served(&r.op.outcome).then_some(r)
        }
    })
    .await
}

/// A PATCH of the register's value.
pub fn patch(value: &str) -> Request {
    Request::Patch {
        value: value.into(),
        if_match: None,
    }
}

/// The value a GET found, if it found one.
pub fn found_value(r: &Recorded) -> Option<&str> {
    match &r.op.outcome {
        Outcome::Ok(Reply::Found { value, .. }) => Some(value),
        _ => None,
    }
}

/// An id that `first` owns among all three nodes and `second` owns once `first` is gone.
pub fn id_moving(first: &str, second: &str) -> String {
    let member = |name: &str| Member {
        name: name.to_owned(),
        cluster_addr: String::new(),
        http_addr: String::new(),
        hosts_db: false,
    };
    let ring = |names: &[&str]| {
        Ring::single(member(names[0])).next(names.iter().map(|m| member(m)).collect())
    };
    let all = ring(&["n1", "n2", "n3"]);
    let rest: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != first)
        .collect();
    let without = ring(&rest);
    std::iter::repeat_with(new_customer_id)
        .find(|id| {
            all.owner(id).is_some_and(|m| m.name == first)
                && without.owner(id).is_some_and(|m| m.name == second)
        })
        .expect("an endless supply of ids")
        .to_string()
}
