//! Property tests: whatever JSON bodies, ids and query strings clients send, the API answers
//! with a client error or success, never a 5xx (and never a panic or hang).

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use customer_cluster::actors::gateway::Gateway;
use customer_cluster::api::{AppState, router};
use customer_cluster::client::encode_segment as encode;
use customer_cluster::config::Config;
use customer_cluster::node::start_actors;
use proptest::prelude::*;
use serde_json::{Map, Value};
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = Config::local("hardening", Some(dir.path().join("h.db")));
        let app = rt.block_on(async {
            let actors = start_actors(&config, None, 1).await.unwrap();
            let state = AppState::new(
                Gateway::new(actors.ctx.clone()),
                vec![],
                config.max_body_bytes,
            );
            std::mem::forget(actors); // lives for the whole test process
            router(state)
        });
        Harness { rt, app, _dir: dir }
    })
}

fn status_of(method: &str, uri: &str, body: Option<String>, content_type: &str) -> u16 {
    let h = harness();
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let req = req
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    h.rt.block_on(async {
        let call = h.app.clone().oneshot(req);
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("request hung")
            .unwrap()
            .status()
            .as_u16()
    })
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z]{1,12}@[a-z]{1,8}\\.[a-z]{2,3}",
        "[ -~]{0,40}",
        Just(String::new()),
        Just("x".repeat(300)),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = prop_oneof![
            Just("name".to_string()),
            Just("email".to_string()),
            Just("phone".to_string()),
            Just("address".to_string()),
            Just("id".to_string()),
            Just("version".to_string()),
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_id() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        any::<String>(),
        "[0-9a-f-]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_yield_a_5xx(body in arb_json(), raw in any::<Vec<u8>>(), id in arb_id()) {
        let json = body.to_string();
        let target = format!("/v1/customers/{}", encode(&id));
        for (method, uri) in [("POST", "/v1/customers"), ("PUT", target.as_str()), ("PATCH", target.as_str())] {
            let s = status_of(method, uri, Some(json.clone()), "application/json");
            prop_assert!(s < 500, "{method} {uri} {json} -> {s}");
            let s = status_of(method, uri, Some(String::from_utf8_lossy(&raw).into_owned()), "application/merge-patch+json");
            prop_assert!(s < 500, "{method} {uri} raw -> {s}");
        }
    }

    #[test]
    fn random_ids_and_queries_never_yield_a_5xx(id in arb_id(), limit in any::<String>(), after in arb_id()) {
        let target = format!("/v1/customers/{}", encode(&id));
        for method in ["GET", "DELETE"] {
            let s = status_of(method, &target, None, "");
            prop_assert!(s < 500, "{method} {target} -> {s}");
        }
        let list = format!("/v1/customers?limit={}&after={}", encode(&limit), encode(&after));
        let s = status_of("GET", &list, None, "");
        prop_assert!(s < 500, "GET {list} -> {s}");
    }

    #[test]
    fn valid_looking_creates_are_2xx_409_or_422(name in arb_text(), email in arb_text(), phone in proptest::option::of(arb_text())) {
        let mut body = Map::new();
        body.insert("name".into(), Value::String(name));
        body.insert("email".into(), Value::String(email));
        if let Some(p) = phone {
            body.insert("phone".into(), Value::String(p));
        }
        let s = status_of("POST", "/v1/customers", Some(Value::Object(body).to_string()), "application/json");
        prop_assert!(matches!(s, 201 | 409 | 422), "-> {s}");
    }
}
