//! Route handlers: parse, call the gateway, shape the response.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorBody};
use super::json::JsonBody;
use super::model::{
    ClusterJson, CustomerInput, CustomerJson, CustomerPatchInput, LeaseJson, ListQuery,
    ListResponse, MemberJson, PingJson, PlacementJson,
};
use super::{AppState, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAY, OWNER_NODE};
use crate::actors::gateway::{self, ClusterStatus, Gateway, Readiness, Routed};
use crate::config::is_valid_node_name;
use crate::customer::{Customer, CustomerId, new_customer_id, parse_customer_id, validate};
use crate::error::Error;

/// Default page size of `GET /v1/customers`.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// How long `/v1/cluster` waits for each member's counters.
const STATS_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long `/ready` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long one `/ready` answer is reused: probes and floods of `/ready` cost at most one
/// database ping per second.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// The last `/ready` answer and when it was found. Callers arriving while a ping runs wait for
/// it and share its answer.
#[derive(Debug, Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(Instant, Result<Readiness, Error>)>>);

impl ReadyCache {
    /// The readiness of `gateway`'s node, at most [`READY_CACHE`] old.
    pub async fn get(&self, gateway: &Gateway) -> Result<Readiness, Error> {
        let mut last = self.0.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return answer.clone();
        }
        let answer = gateway.readiness(READY_TIMEOUT).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

type ApiResult = Result<Response, ApiError>;

/// `POST /v1/customers`
#[utoipa::path(post, path = "/v1/customers", tag = "customers",
    request_body(content = CustomerInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; Location and ETag set", body = CustomerJson,
            links(
                ("GetCustomer" = (operation_id = "get_one", parameters(("id" = "$response.body#/id")),
                    description = "The created customer")),
                ("ReplaceCustomer" = (operation_id = "replace", parameters(("id" = "$response.body#/id")),
                    description = "Replace the created customer")),
                ("PatchCustomer" = (operation_id = "patch", parameters(("id" = "$response.body#/id")),
                    description = "Patch the created customer")),
                ("DeleteCustomer" = (operation_id = "delete", parameters(("id" = "$response.body#/id")),
                    description = "Delete the created customer")),
            )),
        (status = 200, description = "Idempotent replay: this id already exists with these fields", body = CustomerJson),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "Email in use, or id exists with other fields", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Not applied (database, owner or shard lease unavailable); retry; Retry-After set", body = ErrorBody),
        (status = 504, description = "Outcome unknown: retry with the same Idempotency-Key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CustomerInput>,
) -> ApiResult {
    let key = idempotency_key(&headers)?;
    let id = match (&body.id, &key) {
        (Some(raw), _) => {
            parse_customer_id(raw).map_err(|e| ApiError::Unprocessable(e.to_string()))?
        }
        (None, Some(key)) => gateway::id_for_key(key),
        (None, None) => new_customer_id(),
    };
    let fields = validate(body.input())?;
    let (routed, created_now) = s.gateway.create(id, fields, key).await?;
    let location = format!("/v1/customers/{}", routed.value.id);
    let status = if created_now {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = customer_response(status, routed);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/customers/{id}`
#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer UUID", format = "uuid")),
    responses(
        (status = 200, description = "The customer; ETag set", body = CustomerJson),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "Database or owner unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_one(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = path_id(&id)?;
    Ok(customer_response(StatusCode::OK, s.gateway.get(id).await?))
}

/// `PUT /v1/customers/{id}` — full replace, optional `If-Match`.
#[utoipa::path(put, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer UUID", format = "uuid"),
           ("If-Match" = Option<String>, Header, description = "Expected version, e.g. \"3\"",
                pattern = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#, example = "\"1\"")),
    request_body(content = CustomerInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = CustomerJson),
        (status = 400, description = "Malformed JSON, id or If-Match", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "Email in use", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Database or owner unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CustomerInput>,
) -> ApiResult {
    let id = path_id(&id)?;
    let if_match = if_match(&headers)?;
    if body.id.as_deref().is_some_and(|b| b != id.to_string()) {
        return Err(ApiError::Unprocessable(
            "id in the body does not match the URL".into(),
        ));
    }
    let fields = validate(body.input())?;
    let key = idempotency_key(&headers)?;
    Ok(customer_response(
        StatusCode::OK,
        s.gateway.replace(id, fields, if_match, key).await?,
    ))
}

/// `PATCH /v1/customers/{id}` — JSON merge patch, optional `If-Match`.
#[utoipa::path(patch, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer UUID", format = "uuid"),
           ("If-Match" = Option<String>, Header, description = "Expected version, e.g. \"3\"",
                pattern = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#, example = "\"1\"")),
    request_body(content = CustomerPatchInput, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Patched", body = CustomerJson),
        (status = 400, description = "Malformed JSON, id or If-Match", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "Email in use", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Not an object, read-only or unknown member, or invalid field", body = ErrorBody),
        (status = 503, description = "Database or owner unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult {
    let id = path_id(&id)?;
    let if_match = if_match(&headers)?;
    let patch = CustomerPatchInput::from_document(&doc).map_err(ApiError::Unprocessable)?;
    let key = idempotency_key(&headers)?;
    Ok(customer_response(
        StatusCode::OK,
        s.gateway.patch(id, patch.into(), if_match, key).await?,
    ))
}

/// `DELETE /v1/customers/{id}`
#[utoipa::path(delete, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer UUID", format = "uuid"),
           ("If-Match" = Option<String>, Header, description = "Expected version, e.g. \"3\"",
                pattern = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#, example = "\"1\"")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or If-Match", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 503, description = "Database or owner unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let id = path_id(&id)?;
    let key = idempotency_key(&headers)?;
    let routed = s.gateway.delete(id, if_match(&headers)?, key).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_owner(&mut response, &routed.owner);
    set_replay(&mut response, routed.replayed);
    Ok(response)
}

/// `GET /v1/customers/{id}/placement` — the customer's shard, the placement owner, and the
/// shard's lease as the owner (and the holder it names) sees it.
#[utoipa::path(get, path = "/v1/customers/{id}/placement", tag = "cluster",
    params(("id" = String, Path, description = "Customer UUID")),
    responses(
        (status = 200, description = "Shard, owner, lease holder, token, validity left", body = PlacementJson),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn placement(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = path_id(&id)?;
    let p = s.gateway.placement(id).await?;
    let leases = p
        .reports
        .into_iter()
        .map(|r| LeaseJson {
            node: r.node,
            state: r.state,
            token: r.token,
            valid_for_ms: r.valid_for_ms,
            holder: r.holder_hint,
            actor_active: r.active,
        })
        .collect();
    Ok(Json(PlacementJson {
        id: p.id.to_string(),
        shard: p.shard,
        owner: p.owner,
        leases,
    })
    .into_response())
}

/// The client's `Idempotency-Key`, checked (1–200 visible ASCII characters, else 400).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = raw
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    gateway::check_key(text)
        .map(|k| Some(k.to_owned()))
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /v1/customers?limit=&after=`
#[utoipa::path(get, path = "/v1/customers", tag = "customers",
    params(ListQuery),
    responses(
        (status = 200, description = "One page ordered by id; `next` is the cursor for the following page", body = ListResponse),
        (status = 400, description = "Bad limit, cursor or unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        // Not a number counts as out of range: 0 is never a valid page size.
        Some(raw) => Gateway::check_page_size(raw.parse().unwrap_or(0))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(path_id(raw)?),
    };
    let page = s.gateway.list(after, limit).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(CustomerJson::from).collect(),
        next: page.next.map(|id| id.to_string()),
    })
    .into_response())
}

/// `GET /v1/cluster`
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Members, owned shares, active actors, database nodes", body = ClusterJson),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cluster(State(s): State<AppState>) -> ApiResult {
    Ok(Json(cluster_json(s.gateway.cluster_status(STATS_TIMEOUT).await)).into_response())
}

/// The API shape of a cluster status: shares rounded to four decimals, reachability spelled
/// out.
fn cluster_json(status: ClusterStatus) -> ClusterJson {
    let members = status
        .members
        .into_iter()
        .map(|m| MemberJson {
            status: if m.active_customers.is_some() {
                "up"
            } else {
                "unreachable"
            }
            .into(),
            name: m.name,
            cluster_addr: m.cluster_addr,
            http_addr: m.http_addr,
            db: m.hosts_db,
            owned_share: (m.owned_share * 10_000.0).round() / 10_000.0,
            active_customers: m.active_customers,
            leases_held: m.leases_held,
            this_node: m.this_node,
        })
        .collect();
    ClusterJson {
        node: status.node,
        epoch: status.epoch,
        members,
        db_members: status.db_members,
    }
}

/// Most pings one `/v1/cluster/ping` request may send. The pings are sequential remote calls
/// made on behalf of one client request, so this bounds the work (and the time, about 0.2 s on
/// loopback) a single request can cause.
pub const MAX_PINGS: u32 = 1000;

/// `GET /v1/cluster/ping/{node}?count=N` — sequential round trips of a bare heartbeat ping from
/// this node to `node`'s Heartbeat actor (itself included): the cost of one hop, without
/// customer work and without waiting behind any customer queue.
#[utoipa::path(get, path = "/v1/cluster/ping/{node}", tag = "cluster",
    params(("node" = String, Path, description = "Member name, 1..=64 characters of [A-Za-z0-9._-]",
                pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64, example = "n1"),
           ("count" = Option<u32>, Query, description = "Pings to send, 1..=1000 (default 100)",
                minimum = 1, maximum = 1000, example = 10)),
    responses(
        (status = 200, description = "Round-trip percentiles", body = PingJson),
        (status = 400, description = "Malformed node name, or bad count", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such member in this node's view", body = ErrorBody),
        (status = 503, description = "The member does not answer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn ping(
    State(s): State<AppState>,
    Path(node): Path<String>,
    query: Result<Query<std::collections::HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    if !is_valid_node_name(&node) {
        return Err(ApiError::BadRequest(
            "node must be 1 to 64 characters of [A-Za-z0-9._-]".into(),
        ));
    }
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let count = match q.get("count") {
        None => 100,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|c| (1..=MAX_PINGS).contains(c))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("count must be an integer from 1 to {MAX_PINGS}"))
            })?,
    };
    let mut rtts = Vec::with_capacity(count as usize);
    for seq in 0..u64::from(count) {
        rtts.push(s.gateway.ping(&node, seq).await?.as_micros() as u64);
    }
    rtts.sort_unstable();
    let at = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    Ok(Json(PingJson {
        node,
        count,
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
        mean_us: rtts.iter().sum::<u64>() / u64::from(count),
    })
    .into_response())
}

/// `GET /health` — the process is up and serving HTTP.
#[utoipa::path(get, path = "/health", tag = "cluster",
    responses((status = 200, description = "The process serves HTTP")))]
pub async fn health(State(s): State<AppState>) -> Response {
    Json(json!({"status": "ok", "node": s.gateway.node_name()})).into_response()
}

/// `GET /ready` — this node can serve customer requests: its Registry runs and a database
/// answers. The answer is reused for [`READY_CACHE`].
#[utoipa::path(get, path = "/ready", tag = "cluster",
    responses(
        (status = 200, description = "Ready: a database answers and this node is a member"),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn ready(State(s): State<AppState>) -> ApiResult {
    let ready = s.readiness.get(&s.gateway).await?;
    Ok(Json(json!({
        "status": "ready",
        "node": ready.node,
        "database_node": ready.database_node,
        "members": ready.members,
    }))
    .into_response())
}

/// `GET /metrics` — Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>, request: HeaderMap) -> Response {
    match &s.metrics {
        Some(handle) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
                    (header::VARY, "Origin"),
                ],
                handle.render(),
            )
                .into_response();
            // Readable cross-origin only by the dashboard served from a member (it reads every
            // member's request rates); any other web page gets no CORS grant.
            let text = |name| {
                request
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
            };
            if let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST))
                && super::dashboard::is_member_origin(origin, host, &s.gateway.member_http_addrs())
                && let Ok(v) = HeaderValue::from_str(origin)
            {
                response
                    .headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            }
            response
        }
        None => ApiError::Service(Error::Unavailable(
            "metrics are not enabled in this process".into(),
        ))
        .into_response(),
    }
}

fn path_id(raw: &str) -> Result<CustomerId, ApiError> {
    parse_customer_id(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Parses `If-Match`: absent or `*` → no precondition; `"7"`, `W/"7"` or `7` → version 7.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not valid text".into()))?
        .trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
    tag.parse::<u64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "If-Match must be a version ETag like \"3\", got {raw}"
        ))
    })
}

fn customer_response(status: StatusCode, routed: Routed<Customer>) -> Response {
    let etag = format!("\"{}\"", routed.value.version);
    let mut response = (status, Json(CustomerJson::from(routed.value))).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    set_owner(&mut response, &routed.owner);
    set_replay(&mut response, routed.replayed);
    response
}

fn set_replay(response: &mut Response, replayed: bool) {
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
    }
}

fn set_owner(response: &mut Response, owner: &str) {
    if let Ok(v) = HeaderValue::from_str(owner) {
        response.headers_mut().insert(OWNER_NODE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn cluster_json_rounds_shares_and_marks_silent_members_unreachable() {
        use crate::actors::gateway::MemberStatus;
        let member = |name: &str, share: f64, active: Option<u64>| MemberStatus {
            name: name.into(),
            cluster_addr: format!("{name}:4701"),
            http_addr: format!("{name}:8081"),
            hosts_db: name == "n1",
            owned_share: share,
            active_customers: active,
            leases_held: active.map(|a| a * 10),
            this_node: name == "n2",
        };
        let json = cluster_json(ClusterStatus {
            node: "n2".into(),
            epoch: 7,
            members: vec![
                member("n1", 0.333_349, Some(3)),
                member("n2", 0.666_651, None),
            ],
            db_members: vec!["n1".into()],
        });
        assert_eq!((json.node.as_str(), json.epoch), ("n2", 7));
        assert_eq!(json.db_members, ["n1"]);
        let [n1, n2] = &json.members[..] else {
            panic!("{json:?}")
        };
        assert_eq!((n1.owned_share, n2.owned_share), (0.3333, 0.6667));
        assert_eq!((n1.status.as_str(), n1.active_customers), ("up", Some(3)));
        assert_eq!(
            (n2.status.as_str(), n2.active_customers),
            ("unreachable", None)
        );
        assert!(n1.db && !n2.db && n2.this_node && !n1.this_node);
        assert_eq!(n1.http_addr, "n1:8081");
    }

    #[test]
    fn if_match_accepts_strong_weak_bare_and_star() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(if_match(&headers("\"7\"")).unwrap(), Some(7));
        assert_eq!(if_match(&headers("W/\"7\"")).unwrap(), Some(7));
        assert_eq!(if_match(&headers("7")).unwrap(), Some(7));
        assert_eq!(if_match(&headers("*")).unwrap(), None);
        assert!(if_match(&headers("\"abc\"")).is_err());
    }
}
