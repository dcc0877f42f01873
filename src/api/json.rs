//! JSON shapes of the HTTP API and the body extractor, kept apart from domain and wire types so
//! each boundary can change on its own.
//!
//! [`JsonBody`] replaces axum's `Json` extractor so that every rejection — wrong content type,
//! body too large, syntax error, wrong shape — comes back in the API's error format.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::error::ApiError;
use crate::customer::{Customer, CustomerPatch, FieldPatch, FieldsInput};

/// A customer as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerJson {
    /// UUID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Phone number or null.
    pub phone: Option<String>,
    /// Postal address or null.
    pub address: Option<String>,
    /// Version; also the `ETag`.
    pub version: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

impl From<Customer> for CustomerJson {
    fn from(c: Customer) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.fields.name,
            email: c.fields.email,
            phone: c.fields.phone,
            address: c.fields.address,
            version: c.version,
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

/// Formats µs since the Unix epoch as RFC 3339 (UTC, microsecond precision).
pub fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Body of `POST /v1/customers` and `PUT /v1/customers/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsBody {
    /// Optional client-chosen id (POST only), which makes a retried create idempotent.
    pub id: Option<String>,
    /// Name (required).
    pub name: Option<String>,
    /// Email (required).
    pub email: Option<String>,
    /// Phone (optional).
    pub phone: Option<String>,
    /// Address (optional).
    pub address: Option<String>,
}

impl FieldsBody {
    /// The field input for validation.
    pub fn input(&self) -> FieldsInput {
        FieldsInput {
            name: self.name.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            address: self.address.clone(),
        }
    }
}

/// Turns a JSON merge patch document into a typed patch.
pub fn merge_patch(doc: &Value) -> Result<CustomerPatch, ApiError> {
    let Value::Object(members) = doc else {
        return Err(ApiError::Unprocessable(
            "a merge patch must be a JSON object".into(),
        ));
    };
    let mut patch = CustomerPatch::default();
    for (key, value) in members {
        let field = match value {
            Value::Null => FieldPatch::Clear,
            Value::String(s) => FieldPatch::Set(s.clone()),
            _ => {
                return Err(ApiError::Unprocessable(format!(
                    "{key} must be a string or null"
                )));
            }
        };
        match key.as_str() {
            "name" => patch.name = field,
            "email" => patch.email = field,
            "phone" => patch.phone = field,
            "address" => patch.address = field,
            "id" | "version" | "created_at" | "updated_at" => {
                return Err(ApiError::Unprocessable(format!("{key} is read-only")));
            }
            other => return Err(ApiError::Unprocessable(format!("unknown field {other}"))),
        }
    }
    Ok(patch)
}

/// Query of `GET /v1/customers`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1..=1000 (default 50).
    pub limit: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
}

/// Response of `GET /v1/customers`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListResponse {
    /// Customers ordered by id.
    pub items: Vec<CustomerJson>,
    /// Cursor for the next page, or null on the last page.
    pub next: Option<String>,
}

/// Response of `GET /v1/cluster`: the cluster as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterJson {
    /// The node that answered.
    pub node: String,
    /// Placement epoch of this node's view (grows with every membership change).
    pub epoch: u64,
    /// The nodes this node currently places customers on.
    pub members: Vec<MemberJson>,
    /// Nodes hosting a reachable database actor.
    pub db_members: Vec<String>,
}

/// One member in [`ClusterJson`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberJson {
    /// Node name.
    pub name: String,
    /// Cluster address.
    pub cluster_addr: String,
    /// HTTP API address.
    pub http_addr: String,
    /// Whether it hosts a database actor.
    pub db: bool,
    /// Fraction of the id space it owns (0..1).
    pub owned_share: f64,
    /// Customer actors active on it now; null when it did not answer.
    pub active_customers: Option<u64>,
    /// `up`, or `unreachable` when its Registry did not answer in time.
    pub status: String,
    /// Whether this member is the node that answered.
    pub this_node: bool,
}

/// Response of `GET /v1/cluster/ping/{node}`: round trips of a bare heartbeat ping.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PingJson {
    /// The node pinged.
    pub node: String,
    /// Pings sent (sequentially).
    pub count: u32,
    /// Median round trip, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
    /// Mean, µs.
    pub mean_us: u64,
}

/// A JSON request body, with rejections in the API's error format.
pub struct JsonBody<T>(pub T);

/// Media types accepted for JSON bodies (PATCH also accepts merge-patch).
const JSON_TYPES: [&str; 2] = ["application/json", "application/merge-patch+json"];

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match content_type.as_deref() {
            Some(ct) if JSON_TYPES.contains(&ct) => {}
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "expected Content-Type: application/json, got {}",
                    other.unwrap_or("none")
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses JSON: syntax errors are 400, shape errors 422. Every body this API takes is an
/// object, and serde would describe an array or a scalar in terms of the struct's first
/// field ("expected a string"), so those get a plainer message.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if !bytes.trim_ascii_start().starts_with(b"{") => {
            ApiError::Unprocessable("the body must be a JSON object".into())
        }
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500_000), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn merge_patch_members_map_to_keep_clear_set() {
        let p = merge_patch(&json!({"name": "B", "phone": null})).unwrap();
        assert_eq!(p.name, FieldPatch::Set("B".into()));
        assert_eq!(p.phone, FieldPatch::Clear);
        assert_eq!(p.email, FieldPatch::Keep);
    }

    #[test]
    fn merge_patch_refuses_non_objects_read_only_and_unknown_members() {
        for doc in [
            json!([1]),
            json!({"version": "2"}),
            json!({"nick": "x"}),
            json!({"name": 5}),
        ] {
            assert!(
                matches!(merge_patch(&doc), Err(ApiError::Unprocessable(_))),
                "{doc}"
            );
        }
    }

    #[test]
    fn json_syntax_errors_are_400_and_shape_errors_422() {
        assert!(matches!(
            parse::<FieldsBody>(b"{\"name\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse::<FieldsBody>(b"{\"name\": 5}"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse::<FieldsBody>(b"{\"nmae\": \"x\"}"),
            Err(ApiError::Unprocessable(_))
        ));
        for not_an_object in [&b" [1, 2]"[..], b"\"Ada\"", b"7", b"null"] {
            match parse::<FieldsBody>(not_an_object) {
                Err(ApiError::Unprocessable(m)) => assert_eq!(m, "the body must be a JSON object"),
                other => panic!("{not_an_object:?}: {other:?}"),
            }
        }
    }
}
