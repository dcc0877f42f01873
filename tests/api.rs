//! Router tests: every route and every error status, in-process with `oneshot` against a real
//! actor tree and a temporary SQLite file.

use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use customer_cluster::actors::gateway::Gateway;
use customer_cluster::api::{AppState, router};
use customer_cluster::config::{Config, Secret};
use customer_cluster::node::{NodeActors, start_actors};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

static NEXT: AtomicU32 = AtomicU32::new(0);

struct App {
    router: Router,
    _dir: tempfile::TempDir,
    actors: NodeActors,
}

impl Drop for App {
    fn drop(&mut self) {
        self.actors.supervisor.stop(None);
    }
}

async fn app_with(db: bool, tokens: &[&str]) -> App {
    let dir = tempfile::tempdir().unwrap();
    let name = format!(
        "api-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let db_path = db.then(|| dir.path().join("c.db"));
    let config = Config::local(&name, db_path);
    let actors = start_actors(&config, None, 1).await.unwrap();
    let state = AppState::new(
        Gateway::new(actors.ctx.clone()),
        tokens.iter().map(|t| Secret::new(*t)).collect(),
        config.max_body_bytes,
    );
    let app = App {
        router: router(state),
        _dir: dir,
        actors,
    };
    if db {
        // Ready once the node holds the leases of its shards (register, renew, grant).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while send(&app, empty("GET", "/ready")).await.status != StatusCode::OK {
            assert!(std::time::Instant::now() < deadline, "never became ready");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    app
}

async fn app() -> App {
    app_with(true, &[]).await
}

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send(app: &App, req: Request<Body>) -> Reply {
    let response = app.router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("non-JSON body: {bytes:?}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn json_req(method: &str, uri: &str, body: Value) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn create(app: &App, name: &str, email: &str) -> Value {
    let r = send(
        app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"name": name, "email": email}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    req(method, uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn create_returns_201_with_location_etag_and_node_headers() {
    let app = app().await;
    let r = send(
        &app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"name": "Ada", "email": "ada@example.com", "phone": "+44 1234", "address": "London"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.header("location"), format!("/v1/customers/{id}"));
    assert_eq!(r.header("etag"), "\"1\"");
    assert!(!r.header("x-owner-node").is_empty());
    assert_eq!(r.header("x-owner-node"), r.header("x-entry-node"));
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["phone"], "+44 1234");
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn create_rejects_bad_json_400_wrong_shape_422_and_wrong_media_type_415() {
    let app = app().await;
    let bad_json = req("POST", "/v1/customers")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .unwrap();
    let r = send(&app, bad_json).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    for body in [
        json!({"name": "x"}),
        json!({"name": "", "email": "a@b.co"}),
        json!({"name": "x", "email": "not-an-email"}),
        json!({"name": 5, "email": "a@b.co"}),
        json!({"name": "x", "email": "a@b.co", "nickname": "y"}),
        json!({"name": "x".repeat(201), "email": "a@b.co"}),
        json!({"name": "x", "email": "a@b.co", "phone": "call me"}),
        json!({"id": "nope", "name": "x", "email": "a@b.co"}),
    ] {
        let r = send(&app, json_req("POST", "/v1/customers", body.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.error_code(), "invalid_input");
    }

    let text = req("POST", "/v1/customers")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        send(&app, text).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let none = req("POST", "/v1/customers").body(Body::from("{}")).unwrap();
    assert_eq!(
        send(&app, none).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[tokio::test]
async fn duplicate_email_is_409_case_insensitively() {
    let app = app().await;
    create(&app, "A", "same@example.com").await;
    let r = send(
        &app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"name": "B", "email": "SAME@example.com"}),
        ),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::CONFLICT, "conflict")
    );
}

#[tokio::test]
async fn one_mailbox_in_four_unicode_forms_is_one_customer_409() {
    let app = app().await;
    let first = create(&app, "José", "josé@example.com").await;
    assert_eq!(first["email"], "josé@example.com", "stored as typed");
    for twin in [
        "jose\u{301}@example.com",
        "JOSÉ@example.com",
        "\u{FF4A}osé@example.com",
    ] {
        let body = json!({"name": "Twin", "email": twin});
        let r = send(&app, json_req("POST", "/v1/customers", body)).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::CONFLICT, "conflict"),
            "{twin}"
        );
    }
}

#[tokio::test]
async fn an_invisible_character_in_an_email_is_422_naming_it() {
    let app = app().await;
    let body = json!({"name": "José", "email": "jo\u{200B}se@example.com"});
    let r = send(&app, json_req("POST", "/v1/customers", body)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("invisible character U+200B"), "{message}");
}

#[tokio::test]
async fn a_create_with_a_client_id_is_idempotent_and_a_different_body_conflicts() {
    let app = app().await;
    let id = "01900000-0000-7000-8000-0000000000aa";
    let body = json!({"id": id, "name": "A", "email": "idem@example.com"});
    let first = send(&app, json_req("POST", "/v1/customers", body.clone())).await;
    let again = send(&app, json_req("POST", "/v1/customers", body)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::OK, "a replay is reported as such");
    assert_eq!(first.body, again.body);
    let other = send(
        &app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"id": id, "name": "B", "email": "idem@example.com"}),
        ),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = app().await;
    let big = json!({"name": "x", "email": "a@b.co", "address": "y".repeat(2 * 1024 * 1024)});
    let r = send(&app, json_req("POST", "/v1/customers", big)).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn get_returns_the_customer_404_when_absent_and_400_for_a_malformed_id() {
    let app = app().await;
    let c = create(&app, "Ada", "get@example.com").await;
    let id = c["id"].as_str().unwrap();
    let r = send(&app, empty("GET", &format!("/v1/customers/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, c);
    assert_eq!(r.header("etag"), "\"1\"");

    let missing = send(
        &app,
        empty("GET", "/v1/customers/01900000-0000-7000-8000-000000000000"),
    )
    .await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let malformed = send(&app, empty("GET", "/v1/customers/not-a-uuid")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn put_replaces_everything_and_honours_if_match() {
    let app = app().await;
    let c = create(&app, "Ada", "put@example.com").await;
    let uri = format!("/v1/customers/{}", c["id"].as_str().unwrap());
    let r = send(
        &app,
        json_req(
            "PUT",
            &uri,
            json!({"name": "Ada L", "email": "put@example.com", "address": "London"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.body["version"].clone(), r.body["address"].clone()),
        (json!(2), json!("London"))
    );
    assert_eq!(r.header("etag"), "\"2\"");

    let stale = req("PUT", &uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"1\"")
        .body(Body::from(
            json!({"name": "X", "email": "put@example.com"}).to_string(),
        ))
        .unwrap();
    let r = send(&app, stale).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );

    let fresh = req("PUT", &uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"2\"")
        .body(Body::from(
            json!({"name": "Y", "email": "put@example.com"}).to_string(),
        ))
        .unwrap();
    let r = send(&app, fresh).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["address"], Value::Null, "PUT is a full replace");

    let garbage_etag = req("PUT", &uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"abc\"")
        .body(Body::from(
            json!({"name": "Y", "email": "put@example.com"}).to_string(),
        ))
        .unwrap();
    assert_eq!(
        send(&app, garbage_etag).await.status,
        StatusCode::BAD_REQUEST
    );

    let invalid = send(&app, json_req("PUT", &uri, json!({"name": "Y"}))).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    let missing = send(
        &app,
        json_req(
            "PUT",
            "/v1/customers/01900000-0000-7000-8000-000000000001",
            json!({"name": "Y", "email": "y@example.com"}),
        ),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    create(&app, "Other", "taken@example.com").await;
    let taken = send(
        &app,
        json_req(
            "PUT",
            &uri,
            json!({"name": "Y", "email": "taken@example.com"}),
        ),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn patch_is_a_json_merge_patch() {
    let app = app().await;
    let r = send(
        &app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"name": "Ada", "email": "patch@example.com", "phone": "+1 555"}),
        ),
    )
    .await;
    let uri = format!("/v1/customers/{}", r.body["id"].as_str().unwrap());
    let merge = req("PATCH", &uri)
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(Body::from(
            json!({"address": "Paris", "phone": null}).to_string(),
        ))
        .unwrap();
    let r = send(&app, merge).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Ada");
    assert_eq!(r.body["address"], "Paris");
    assert_eq!(r.body["phone"], Value::Null);
    assert_eq!(r.body["version"], 2);

    for bad in [
        json!(["x"]),
        json!({"version": 9}),
        json!({"email": null}),
        json!({"name": 1}),
        json!({"email": "bad"}),
    ] {
        let r = send(&app, json_req("PATCH", &uri, bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let stale = req("PATCH", &uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"1\"")
        .body(Body::from(json!({"name": "B"}).to_string()))
        .unwrap();
    assert_eq!(
        send(&app, stale).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    let missing = send(
        &app,
        json_req(
            "PATCH",
            "/v1/customers/01900000-0000-7000-8000-000000000002",
            json!({"name": "B"}),
        ),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    create(&app, "Other", "other@example.com").await;
    let taken = send(
        &app,
        json_req("PATCH", &uri, json!({"email": "other@example.com"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn delete_is_204_then_404_and_honours_if_match() {
    let app = app().await;
    let c = create(&app, "Ada", "delete@example.com").await;
    let uri = format!("/v1/customers/{}", c["id"].as_str().unwrap());
    let stale = req("DELETE", &uri)
        .header(header::IF_MATCH, "\"7\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app, stale).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    let r = send(&app, empty("DELETE", &uri)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!r.header("x-owner-node").is_empty());
    assert_eq!(
        send(&app, empty("GET", &uri)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, empty("DELETE", &uri)).await.status,
        StatusCode::NOT_FOUND
    );
    // The email is free again.
    create(&app, "Ada again", "delete@example.com").await;
}

#[tokio::test]
async fn list_pages_with_a_cursor_and_rejects_bad_parameters() {
    let app = app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let c = create(&app, &format!("C{i}"), &format!("list{i}@example.com")).await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut uri = "/v1/customers?limit=3".to_owned();
    loop {
        let r = send(&app, empty("GET", &uri)).await;
        assert_eq!(r.status, StatusCode::OK);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match r.body["next"].as_str() {
            Some(next) => uri = format!("/v1/customers?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=nope",
        "color=blue",
    ] {
        let r = send(&app, empty("GET", &format!("/v1/customers?{bad}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn cluster_health_and_ready_describe_this_node() {
    let app = app().await;
    let r = send(&app, empty("GET", "/v1/cluster")).await;
    assert_eq!(r.status, StatusCode::OK);
    let node = r.body["node"].as_str().unwrap();
    assert_eq!(r.body["members"][0]["name"], node);
    assert_eq!(r.body["members"][0]["owned_share"], 1.0);
    assert_eq!(r.body["members"][0]["db"], true);
    assert_eq!(r.body["members"][0]["leases_held"], 1024);
    assert_eq!(r.body["db_members"], json!([node]));
    assert_eq!(
        send(&app, empty("GET", "/health")).await.status,
        StatusCode::OK
    );
    let ready = send(&app, empty("GET", "/ready")).await;
    assert_eq!(
        (ready.status, ready.body["status"].clone()),
        (StatusCode::OK, json!("ready"))
    );
}

#[tokio::test]
async fn ping_measures_round_trips_to_a_member_and_refuses_unknown_nodes_and_bad_counts() {
    let app = app().await;
    let cluster = send(&app, empty("GET", "/v1/cluster")).await;
    let me = cluster.body["node"].as_str().unwrap().to_owned();
    let r = send(
        &app,
        empty("GET", &format!("/v1/cluster/ping/{me}?count=50")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["count"], 50);
    let (p50, p99, max) = (
        r.body["p50_us"].as_u64().unwrap(),
        r.body["p99_us"].as_u64().unwrap(),
        r.body["max_us"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max && max > 0);
    assert_eq!(
        send(&app, empty("GET", "/v1/cluster/ping/nobody"))
            .await
            .status,
        StatusCode::NOT_FOUND,
        "a non-member is a permanent condition"
    );
    for bad_name in ["x%0A%5Bs1%5D", "a%20b", &"n".repeat(65)] {
        let r = send(&app, empty("GET", &format!("/v1/cluster/ping/{bad_name}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad_name}");
    }
    let r = send(
        &app,
        empty("GET", &format!("/v1/cluster/ping/{me}?count=1000")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the cap itself is allowed");
    for bad in ["count=0", "count=1001", "count=10000", "count=x"] {
        let r = send(&app, empty("GET", &format!("/v1/cluster/ping/{me}?{bad}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn a_request_slower_than_the_http_request_timeout_is_answered_504() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::local("api-request-timeout", Some(dir.path().join("t.db")));
    let actors = start_actors(&config, None, 1).await.unwrap();
    let state = AppState::new(Gateway::new(actors.ctx.clone()), vec![], 1 << 20);
    let patient = App {
        router: router(state.clone()),
        _dir: tempfile::tempdir().unwrap(),
        actors,
    };
    // A thousand sequential pings take milliseconds; a 1 ms budget cannot hold them.
    let impatient = router(state.with_request_timeout(std::time::Duration::from_millis(1)));
    let path = "/v1/cluster/ping/api-request-timeout?count=1000";
    let r = impatient.oneshot(empty("GET", path)).await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    let r = send(&patient, empty("GET", path)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    drop(dir);
}

#[tokio::test]
async fn without_a_database_requests_fail_with_503_and_retry_after() {
    let app = app_with(false, &[]).await;
    let r = send(
        &app,
        json_req(
            "POST",
            "/v1/customers",
            json!({"name": "A", "email": "a@example.com"}),
        ),
    )
    .await;
    // Without a database no shard lease can be granted: nothing is applied, retry later.
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_holder")
    );
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(
        send(&app, empty("GET", "/ready")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send(&app, empty("GET", "/health")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bearer_tokens_guard_v1_and_any_configured_token_works() {
    let app = app_with(true, &["old-token", "new-token"]).await;
    let r = send(&app, empty("GET", "/v1/customers")).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let wrong = req("GET", "/v1/customers")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.status, StatusCode::UNAUTHORIZED);
    for token in ["old-token", "new-token"] {
        let ok = req("GET", "/v1/customers")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, ok).await.status, StatusCode::OK, "{token}");
    }
    assert_eq!(
        send(&app, empty("GET", "/health")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors_and_request_ids_are_echoed() {
    let app = app().await;
    let r = send(&app, empty("GET", "/v2/whatever")).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = send(&app, empty("POST", "/health")).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let tagged = req("GET", "/health")
        .header("x-request-id", "trace-42")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, tagged).await.header("x-request-id"), "trace-42");
    let generated = send(&app, empty("GET", "/health")).await;
    assert!(!generated.header("x-request-id").is_empty());
}

#[tokio::test]
async fn unicode_and_sql_metacharacters_are_data() {
    let app = app().await;
    let name = "Ζωή'; DROP TABLE customers; -- 🙂";
    let c = create(&app, name, "zoe@παράδειγμα.δοκιμή").await;
    let r = send(
        &app,
        empty(
            "GET",
            &format!("/v1/customers/{}", c["id"].as_str().unwrap()),
        ),
    )
    .await;
    assert_eq!(r.body["name"], name);
    assert_eq!(
        send(&app, empty("GET", "/v1/customers")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_matches_the_router() {
    let app = app().await;
    let r = send(&app, empty("GET", "/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    let spec = r.body;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(spec["info"]["title"], "customer-cluster");
    let paths = spec["paths"].as_object().unwrap();

    // Every route the router serves is documented...
    let served = [
        ("/v1/customers", vec!["get", "post"]),
        ("/v1/customers/{id}", vec!["get", "put", "patch", "delete"]),
        ("/v1/customers/{id}/placement", vec!["get"]),
        ("/v1/cluster", vec!["get"]),
        ("/v1/cluster/ping/{node}", vec!["get"]),
        ("/v1/cluster/shards", vec!["get"]),
        ("/v1/events", vec!["get"]),
        ("/health", vec!["get"]),
        ("/ready", vec!["get"]),
        ("/metrics", vec!["get"]),
        ("/openapi.json", vec!["get"]),
    ];
    let mut documented: Vec<&String> = paths.keys().collect();
    documented.sort();
    let mut expected: Vec<&str> = served.iter().map(|(p, _)| *p).collect();
    expected.sort();
    assert_eq!(documented, expected);

    // ...and every documented operation exists on the router, with its responses described.
    for (path, methods) in &served {
        let ops = paths[*path].as_object().unwrap();
        let mut documented_methods: Vec<&String> = ops.keys().collect();
        documented_methods.sort();
        let mut want = methods.clone();
        want.sort();
        assert_eq!(documented_methods, want, "{path}");
        for method in methods {
            let op = &ops[*method];
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path}"
            );
            if *path == "/v1/events" {
                continue; // a stream that never ends: routed, see the event stream tests
            }
            let uri = path
                .replace("{id}", "01900000-0000-7000-8000-000000000000")
                .replace("{node}", "nobody");
            let reply = send(&app, json_req(&method.to_uppercase(), &uri, json!({}))).await;
            let unrouted = reply.error_code() == "method_not_allowed"
                || (reply.status == StatusCode::NOT_FOUND
                    && reply.body["error"]["message"] == "no such route");
            assert!(!unrouted, "{method} {path} is documented but not routed");
        }
    }
    // Referenced schemas exist.
    for schema in [
        "CustomerJson",
        "CustomerInput",
        "CustomerPatchInput",
        "ListResponse",
        "ClusterJson",
        "ShardMapJson",
        "ClusterEvent",
        "ErrorBody",
    ] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn failed_creates_and_misses_leave_no_actor_behind() {
    let app = app().await;
    create(&app, "Only", "only@example.com").await;
    for i in 0..3 {
        let dup = send(
            &app,
            json_req(
                "POST",
                "/v1/customers",
                json!({"name": format!("D{i}"), "email": "only@example.com"}),
            ),
        )
        .await;
        assert_eq!(dup.status, StatusCode::CONFLICT);
        let miss = send(
            &app,
            empty(
                "GET",
                &format!("/v1/customers/01900000-0000-7000-8000-00000000000{i}"),
            ),
        )
        .await;
        assert_eq!(miss.status, StatusCode::NOT_FOUND);
    }
    // Retirement is asynchronous (the actor tells its registry); poll briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let c = send(&app, empty("GET", "/v1/cluster")).await;
        let active = c.body["members"][0]["active_customers"].as_u64().unwrap();
        if active == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{active} actors active, expected only the one customer's"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn keyed(method: &str, uri: &str, key: &str, body: Value) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_keyed_create_retried_gets_the_same_customer_back_marked_as_a_replay() {
    let app = app().await;
    let body = json!({"name": "Kay", "email": "kay@example.com"});
    let first = send(
        &app,
        keyed("POST", "/v1/customers", "create-kay-1", body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("idempotent-replay"), "");
    let again = send(&app, keyed("POST", "/v1/customers", "create-kay-1", body)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("idempotent-replay"), "true");
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["version"], first.body["version"]);
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_422_and_changes_nothing() {
    let app = app().await;
    let c = create(&app, "Lee", "lee@example.com").await;
    let uri = format!("/v1/customers/{}", c["id"].as_str().unwrap());
    let one = send(
        &app,
        keyed("PATCH", &uri, "patch-lee", json!({"name": "One"})),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK);
    let two = send(
        &app,
        keyed("PATCH", &uri, "patch-lee", json!({"name": "Two"})),
    )
    .await;
    assert_eq!(two.status, StatusCode::UNPROCESSABLE_ENTITY);
    let now = send(&app, empty("GET", &uri)).await;
    assert_eq!(now.body["name"], "One");
    // The same key and body again is a replay of the first answer, not a second write.
    let replay = send(
        &app,
        keyed("PATCH", &uri, "patch-lee", json!({"name": "One"})),
    )
    .await;
    assert_eq!(replay.header("idempotent-replay"), "true");
    assert_eq!(replay.body["version"], one.body["version"]);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400() {
    let app = app().await;
    let body = json!({"name": "Max", "email": "max@example.com"});
    for bad in ["", "has space", &"k".repeat(201)] {
        let r = send(&app, keyed("POST", "/v1/customers", bad, body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let ok = send(&app, keyed("POST", "/v1/customers", &"k".repeat(200), body)).await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_placement_of_a_customer_names_its_shard_owner_and_lease() {
    let app = app().await;
    let c = create(&app, "Pia", "pia@example.com").await;
    let uri = format!("/v1/customers/{}/placement", c["id"].as_str().unwrap());
    let r = send(&app, empty("GET", &uri)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["shard"].as_u64().unwrap() < 1024);
    let owner = r.body["owner"].as_str().unwrap().to_owned();
    let lease = &r.body["leases"][0];
    assert_eq!(lease["node"], owner.as_str());
    assert_eq!(lease["state"], "held");
    assert!(lease["token"].as_u64().unwrap() >= 1);
    let left = lease["valid_for_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 2000, "{left}");
    assert_eq!(lease["actor_active"], true);
}

/// Reads SSE frames from a streaming body until one satisfies `found` (or 10 s pass).
async fn sse_until(body: Body, found: impl Fn(&str) -> bool) -> String {
    let mut stream = body.into_data_stream();
    let mut seen = String::new();
    let deadline = std::time::Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        use futures::StreamExt;
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("body chunk")));
            if found(&seen) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event in: {seen}"));
    seen
}

#[tokio::test]
async fn the_event_stream_replays_recent_events_then_sends_new_ones() {
    let app = app_with(true, &["secret-token"]).await;
    let denied = send(&app, empty("GET", "/v1/events")).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let bus = &app.actors.ctx.events;
    bus.emit(
        customer_cluster::events::EventKind::MemberEvicted,
        "n9",
        "silent for 1600 ms",
    );
    let request = req("GET", "/v1/events")
        .header(header::AUTHORIZATION, "Bearer secret-token")
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let body = response.into_body();
    // The node's own start (leases granted) was recorded before we subscribed: replayed.
    let replayed = sse_until(body, |s| s.contains("member_evicted")).await;
    assert!(replayed.contains("lease_acquired"), "{replayed}");
    let line = replayed
        .lines()
        .find(|l| l.contains("member_evicted"))
        .unwrap();
    let event: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(event["detail"], "n9");
    assert_eq!(event["cause"], "silent for 1600 ms");
    assert_eq!(event["node"], app.actors.ctx.name.as_str());

    // A live event reaches a stream that is already open.
    let request = req("GET", "/v1/events")
        .header(header::AUTHORIZATION, "Bearer secret-token")
        .body(Body::empty())
        .unwrap();
    let body = app
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .into_body();
    let emitter = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        emitter.emit(
            customer_cluster::events::EventKind::ActorRestarted,
            "live-one",
            "test",
        );
    });
    sse_until(body, |s| s.contains("live-one")).await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_a_final_dropped_event() {
    let app = app().await;
    let body = app
        .router
        .clone()
        .oneshot(empty("GET", "/v1/events"))
        .await
        .unwrap()
        .into_body();
    // The stream is not read while far more events than its buffer are emitted.
    for i in 0..customer_cluster::events::SUBSCRIBER_BUFFER * 2 + 300 {
        app.actors.ctx.events.emit(
            customer_cluster::events::EventKind::PlacementChanged,
            format!("{i}"),
            "flood",
        );
    }
    let all = sse_until(body, |s| s.contains("event: dropped")).await;
    assert!(all.contains("\"missed\""), "{all}");
}

#[tokio::test]
async fn the_shard_table_lists_every_shard_with_owner_and_lease() {
    let app = app().await;
    let r = send(&app, empty("GET", "/v1/cluster/shards")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let shards = r.body["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 1024);
    let me = app.actors.ctx.name.as_str();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["shard"], i as u64);
        assert_eq!(s["owner"], me);
    }
    // Ready means every shard's lease is held here.
    assert!(
        shards
            .iter()
            .all(|s| s["state"] == "held" && s["holder"] == me),
        "{:?}",
        &shards[..3]
    );
}

#[tokio::test]
async fn the_dashboard_is_static_and_served_without_a_token() {
    let app = app_with(true, &["secret-token"]).await;
    for (path, kind, needle) in [
        ("/dashboard", "text/html", "shard-map"),
        ("/dashboard/app.js", "text/javascript", "sessionStorage"),
        ("/dashboard/style.css", "text/css", "#shard-map"),
    ] {
        let response = app
            .router
            .clone()
            .oneshot(empty("GET", path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let ct = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains(needle), "{path}");
    }
    let missing = send(&app, empty("GET", "/dashboard/secrets.txt")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // The data behind it is not open.
    let shards = send(&app, empty("GET", "/v1/cluster/shards")).await;
    assert_eq!(shards.status, StatusCode::UNAUTHORIZED);
}
