//! The JSON bodies of the HTTP API as plain serde types: what handlers read and write, what
//! the CLI client, the bulk import and the load generator decode, and what the OpenAPI
//! document describes (each derives `utoipa::ToSchema`, so the document is generated from the
//! very types on the wire).
//!
//! ```text
//! client / bench ──serde──▶ model ◀──serde── handlers (through api::json::JsonBody)
//!                             │
//!                             └── ToSchema ──▶ api::openapi
//! ```
//!
//! Deliberately not here: anything of axum. The extractor and its rejection mapping live in
//! `api::json`, HTTP statuses in `api::error`, so the client side of the crate depends on these
//! shapes without depending on the server's HTTP stack. Also not here: domain rules (in
//! `customer`) and wire types (in `cluster::protocol`) — each boundary changes on its own.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::customer::{Customer, CustomerPatch, FieldPatch, FieldsInput};

/// A customer as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerJson {
    /// UUID.
    #[schema(format = "uuid")]
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

// The `pattern`s below state what `customer::validate` accepts, so that a schema-driven client
// generates bodies the server takes (ECMA-262 and Python `re` read them alike):
// * name, address: no control characters (Unicode Cc), no bidirectional controls, no
//   whitespace at either end (the server trims, then refuses those characters);
// * email: a conservative ASCII subset of at most 253 characters (the server also takes
//   internationalised domains and more labels);
// * phone: at least three digits first (after an optional `+`), then digits, spaces, `().-`.
// Each pattern bounds the length itself (200, 500, 253, 32 characters) instead of
// `maxLength`: schemathesis 3 fails to merge a length into patterns of this shape. utoipa takes
// only literals in these attributes, hence the repetition; the openapi tests pin them.
// `name` and `email` are required, but read as options so that a missing one is answered by
// validation (422, naming the field) rather than by serde's generic message; the schema states
// them as required strings. (Plain comments: doc comments here become the public schema.)
/// Body of `POST /v1/customers` and `PUT /v1/customers/{id}`. Unknown members are refused
/// (422).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000", "address": "12 St James's Square, London"}))]
pub struct CustomerInput {
    /// Optional client-chosen UUID. On POST, a retried create with the same id and body
    /// succeeds once; on PUT it must equal the id in the URL.
    #[schema(format = "uuid")]
    pub id: Option<String>,
    /// Display name, 1..=200 characters, no control characters.
    #[schema(value_type = String, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]([^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{0,198}[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069])?$", example = "Ada Lovelace")]
    pub name: Option<String>,
    /// Email address, stored as typed; unique by mailbox (Unicode NFKC, case folded, IDNA domain).
    #[schema(value_type = String, pattern = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,60}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,60}[A-Za-z0-9])?){1,2}$", example = "ada@example.com")]
    pub email: Option<String>,
    /// Phone number: at least 3 digits; digits, spaces and `+-().`; at most 32 characters.
    #[schema(
        pattern = r"^\+?[0-9]{3}[0-9 ().-]{0,28}$",
        example = "+44 20 7946 0000"
    )]
    pub phone: Option<String>,
    /// Postal address, at most 500 characters, no control characters.
    #[schema(
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]([^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{0,498}[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069])?$",
        example = "12 St James's Square, London"
    )]
    pub address: Option<String>,
}

impl CustomerInput {
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

/// A JSON merge patch (RFC 7396) of a customer: absent members are kept, `null` clears an
/// optional field, a string replaces. `name` and `email` cannot be null.
// Serde cannot tell an absent member from a `null` one, so this is read from a parsed document
// with `from_document` instead of being deserialized.
#[derive(Debug, Clone, Default, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({"phone": null, "address": "1 Main St"}))]
pub struct CustomerPatchInput {
    /// New name (not null: a customer always has one).
    #[schema(value_type = String, required = false, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]([^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{0,198}[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069])?$")]
    pub name: FieldPatch,
    /// New email (not null).
    #[schema(value_type = String, required = false, pattern = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,60}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,60}[A-Za-z0-9])?){1,2}$")]
    pub email: FieldPatch,
    /// New phone, or null to remove it.
    #[schema(value_type = Option<String>, pattern = r"^\+?[0-9]{3}[0-9 ().-]{0,28}$")]
    pub phone: FieldPatch,
    /// New address, or null to remove it.
    #[schema(value_type = Option<String>, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]([^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{0,498}[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069])?$")]
    pub address: FieldPatch,
}

impl CustomerPatchInput {
    /// Reads a merge patch document. The error is the client-facing reason: not an object, a
    /// member that is neither a string nor null, a read-only member, or an unknown member.
    pub fn from_document(doc: &Value) -> Result<Self, String> {
        let Value::Object(members) = doc else {
            return Err("a merge patch must be a JSON object".into());
        };
        let mut patch = Self::default();
        for (key, value) in members {
            let field = match value {
                Value::Null => FieldPatch::Clear,
                Value::String(s) => FieldPatch::Set(s.clone()),
                _ => return Err(format!("{key} must be a string or null")),
            };
            match key.as_str() {
                "name" => patch.name = field,
                "email" => patch.email = field,
                "phone" => patch.phone = field,
                "address" => patch.address = field,
                "id" | "version" | "created_at" | "updated_at" => {
                    return Err(format!("{key} is read-only"));
                }
                other => return Err(format!("unknown field {other}")),
            }
        }
        Ok(patch)
    }
}

impl From<CustomerPatchInput> for CustomerPatch {
    fn from(p: CustomerPatchInput) -> Self {
        Self {
            name: p.name,
            email: p.email,
            phone: p.phone,
            address: p.address,
        }
    }
}

/// Query of `GET /v1/customers`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1..=1000 (default 50).
    // Read as text so that a bad value gets the API's own 400 message, not serde's.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 50)]
    pub limit: Option<String>,
    /// Cursor: the `next` of the previous page (a customer UUID).
    #[param(format = "uuid")]
    pub after: Option<String>,
}

/// Response of `GET /v1/customers`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListResponse {
    /// Customers ordered by id.
    pub items: Vec<CustomerJson>,
    /// Cursor for the next page, or null on the last page.
    #[schema(format = "uuid")]
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
    /// Shards whose lease it holds now; null when it did not answer.
    #[serde(default)]
    pub leases_held: Option<u64>,
    /// `up`, or `unreachable` when its Registry did not answer in time.
    pub status: String,
    /// Whether this member is the node that answered.
    pub this_node: bool,
}

/// Response of `GET /v1/customers/{id}/placement`: where a customer lives and who may serve it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementJson {
    /// The customer id.
    pub id: String,
    /// Its shard (0..1024).
    pub shard: u16,
    /// The member placement gives the shard to, as the answering node sees the members.
    pub owner: Option<String>,
    /// The lease as the owner (and the holder it names, if another node) sees it.
    pub leases: Vec<LeaseJson>,
}

/// One node's view of a shard's lease.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseJson {
    /// The node reporting.
    pub node: String,
    /// `held`, `lapsed`, `lost`, `releasing` or `none`.
    pub state: String,
    /// Fencing token of its grant.
    pub token: Option<u64>,
    /// Lease validity left on that node's clock, ms (only while held).
    pub valid_for_ms: Option<u64>,
    /// The holder named in the last lease table that node read.
    pub holder: Option<String>,
    /// Whether a customer actor for this id is active on that node.
    pub actor_active: bool,
}

/// Response of `GET /v1/cluster/ping/{node}`: round trips of a bare Registry ping.
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

/// Response of `GET /v1/cluster/shards`: every shard's owner and lease as this node sees them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardMapJson {
    /// The node that answered.
    pub node: String,
    /// Placement epoch of this node's view.
    pub epoch: u64,
    /// All 1024 shards, shard 0 first.
    pub shards: Vec<ShardJson>,
}

/// One shard in [`ShardMapJson`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardJson {
    /// Shard number, 0 to 1023.
    pub shard: u16,
    /// The member placement gives it to (`null` without members).
    pub owner: Option<String>,
    /// The node holding its lease in the last lease table read (`null` when free).
    pub holder: Option<String>,
    /// Fencing token of that lease (0 when never granted).
    pub token: u64,
    /// `held`, `lapsed`, `lost`, `releasing`, `free` or `unknown` (before the first read).
    pub state: String,
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
        let p = CustomerPatchInput::from_document(&json!({"name": "B", "phone": null})).unwrap();
        assert_eq!(p.name, FieldPatch::Set("B".into()));
        assert_eq!(p.phone, FieldPatch::Clear);
        assert_eq!(p.email, FieldPatch::Keep);
        let typed = CustomerPatch::from(p);
        assert_eq!(typed.name, FieldPatch::Set("B".into()));
        assert_eq!(typed.phone, FieldPatch::Clear);
        assert_eq!(typed.address, FieldPatch::Keep);
    }

    #[test]
    fn merge_patch_refuses_non_objects_read_only_and_unknown_members() {
        for (doc, reason) in [
            (json!([1]), "a merge patch must be a JSON object"),
            (json!({"version": "2"}), "version is read-only"),
            (json!({"nick": "x"}), "unknown field nick"),
            (json!({"name": 5}), "name must be a string or null"),
        ] {
            assert_eq!(
                CustomerPatchInput::from_document(&doc),
                Err(reason.to_owned()),
                "{doc}"
            );
        }
    }

    #[test]
    fn customer_input_refuses_unknown_members_but_leaves_required_ones_to_validation() {
        let missing: CustomerInput = serde_json::from_value(json!({"name": "Ada"})).unwrap();
        assert_eq!(missing.input().email, None);
        assert!(serde_json::from_value::<CustomerInput>(json!({"nmae": "x"})).is_err());
    }
}
