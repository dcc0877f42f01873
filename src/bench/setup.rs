//! Getting ready to measure: learn which node is which, then create the customers the workload
//! addresses.
//!
//! **Discovery** asks every `--nodes` URL for `GET /v1/cluster` and keeps the `node` name it
//! reports, so owners named in `x-owner-node` can be mapped back to URLs. Two URLs reaching
//! the same node are refused (they would skew routing). Cluster members missing from
//! `--nodes` are logged: keys they own cannot be sent to their owner.
//!
//! **Preload** creates `--keys` customers, [`PRELOAD_IN_FLIGHT`] at a time, round-robin over
//! the nodes, and remembers each one's id and owner. Each create carries a client-chosen id,
//! so a retry after a lost answer replays the create (200) instead of duplicating it or
//! failing on the now-taken email.
//!
//! **Removal** (`--cleanup`) lists every customer and deletes those whose email carries the
//! run's tag, [`DELETES_IN_FLIGHT`] at a time.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::json;

use super::BenchError;
use super::keys::{EmailGen, KeyTable};
use crate::api::OWNER_NODE;
use crate::api::model::ClusterJson;
use crate::client::{ClientError, HttpClient, HttpResponse, customer_path};

/// Preload creates in flight at once.
const PRELOAD_IN_FLIGHT: usize = 64;
/// Cleanup deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 64;
/// Attempts per keyed create (preload and replacements); retries reuse the client-chosen id,
/// so a create whose answer was lost is replayed, not duplicated.
const CREATE_ATTEMPTS: u32 = 3;
/// Pause before retrying a create (times the attempt number).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// One benchmarked node.
pub(super) struct Target {
    /// Its name, from `GET /v1/cluster` (or the URL with `--path` when it did not say).
    pub name: String,
    /// Client bound to it.
    pub client: HttpClient,
}

/// Asks each URL for its node name; names must be distinct. With `strict` false (`--path`),
/// a node that answers but will not describe itself is named by its URL.
pub(super) async fn discover(
    urls: &[String],
    token: Option<String>,
    timeout: Duration,
    strict: bool,
) -> Result<Vec<Target>, BenchError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut members = BTreeSet::new();
    for url in urls {
        let (target, seen) = discover_one(url, token.clone(), timeout, strict).await?;
        if let Some(first) = targets.iter().find(|t| t.name == target.name) {
            return Err(BenchError::DuplicateNode {
                name: target.name,
                first: first.client.base().to_owned(),
                second: target.client.base().to_owned(),
            });
        }
        members.extend(seen);
        targets.push(target);
    }
    let missing: Vec<_> = members
        .iter()
        .filter(|m| !targets.iter().any(|t| &t.name == *m))
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "cluster members not in --nodes receive no requests"
        );
    }
    Ok(targets)
}

async fn discover_one(
    url: &str,
    token: Option<String>,
    timeout: Duration,
    strict: bool,
) -> Result<(Target, Vec<String>), BenchError> {
    let invalid = |e: ClientError| BenchError::InvalidNode {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let client = HttpClient::new(url, token, timeout).map_err(invalid)?;
    let base = client.base().to_owned();
    let response = client
        .get("/v1/cluster")
        .await
        .map_err(|e| BenchError::Unreachable {
            url: base.clone(),
            reason: e.to_string(),
        })?;
    match response.ok().and_then(|r| r.json::<ClusterJson>()) {
        Ok(c) => {
            let members = c.members.into_iter().map(|m| m.name).collect();
            Ok((
                Target {
                    name: c.node,
                    client,
                },
                members,
            ))
        }
        Err(e) if strict => Err(BenchError::Discovery {
            url: base,
            reason: e.to_string(),
        }),
        Err(_) => Ok((Target { name: base, client }, Vec::new())),
    }
}

/// Creates `count` customers spread over the targets, `PRELOAD_IN_FLIGHT` at a time.
pub(super) async fn preload(
    targets: &[Target],
    by_name: &HashMap<String, usize>,
    count: usize,
    emails: &EmailGen,
) -> Result<KeyTable, BenchError> {
    let started = Instant::now();
    let creates = futures::stream::iter(0..count)
        .map(|i| {
            let client = &targets[i % targets.len()].client;
            async move { (i, create_keyed(client, emails).await) }
        })
        .buffer_unordered(PRELOAD_IN_FLIGHT);
    let mut creates = std::pin::pin!(creates);
    let mut entries = vec![(String::new(), None); count];
    let mut created = 0;
    while let Some((i, outcome)) = creates.next().await {
        let (id, owner) = outcome.map_err(|(_, reason)| BenchError::Preload {
            created,
            keys: count,
            reason,
        })?;
        entries[i] = (id, owner.and_then(|o| by_name.get(&o).copied()));
        created += 1;
    }
    tracing::info!(count, elapsed = ?started.elapsed(), "preloaded customers");
    Ok(KeyTable::new(entries))
}

/// Deletes every customer whose email `emails` could have made; returns how many. A delete
/// that finds the customer already gone counts as removed.
pub(super) async fn remove_run(
    client: &HttpClient,
    emails: &EmailGen,
) -> Result<usize, BenchError> {
    let failed = |removed: usize| {
        move |e: ClientError| BenchError::Cleanup {
            removed,
            reason: e.to_string(),
        }
    };
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list_page(1000, after.as_deref())
            .await
            .map_err(failed(0))?;
        let mine = page.items.into_iter().filter(|c| emails.made(&c.email));
        ids.extend(mine.map(|c| c.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let deletes = futures::stream::iter(ids)
        .map(|id| async move {
            let r = client
                .send(Method::DELETE, &customer_path(&id), None, &[])
                .await?;
            match r.status {
                StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
                _ => r.ok().map(drop),
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT);
    let mut deletes = std::pin::pin!(deletes);
    let mut removed = 0;
    while let Some(outcome) = deletes.next().await {
        outcome.map_err(failed(removed))?;
        removed += 1;
    }
    Ok(removed)
}

/// Creates one customer with a client-chosen id; returns its id and owner node name, or an
/// error category and a message.
pub(super) async fn create_keyed(
    client: &HttpClient,
    emails: &EmailGen,
) -> Result<(String, Option<String>), (String, String)> {
    let id = uuid::Uuid::now_v7().to_string();
    let (n, email) = emails.next();
    let body = json!({"id": id, "name": format!("Bench Customer {n}"), "email": email});
    let mut last = (String::new(), String::new());
    for attempt in 0..CREATE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY_BACKOFF * attempt).await;
        }
        let result = client.json(Method::POST, "/v1/customers", &body, &[]).await;
        let status = result.as_ref().map(|r| r.status.as_u16()).ok();
        if let Ok(r) = &result
            && matches!(status, Some(200 | 201))
        {
            return Ok((id, r.header(OWNER_NODE).map(str::to_owned)));
        }
        last = (error_category(&result), describe(result));
        if status.is_some_and(|s| s < 500) {
            break;
        }
    }
    Err(last)
}

fn describe(result: Result<HttpResponse, ClientError>) -> String {
    match result.and_then(HttpResponse::ok) {
        Ok(r) => format!("unexpected HTTP {}", r.status),
        Err(e) => e.to_string(),
    }
}

/// `timeout`, `transport`, or `http_<status>`.
pub(super) fn error_category(result: &Result<HttpResponse, ClientError>) -> String {
    match result {
        Ok(r) => format!("http_{}", r.status.as_u16()),
        Err(ClientError::Timeout(..)) => "timeout".into(),
        Err(_) => "transport".into(),
    }
}
