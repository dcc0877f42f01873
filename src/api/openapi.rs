//! The OpenAPI 3.1 description of the API, generated from the handlers' `#[utoipa::path]`
//! attributes and the `ToSchema` derives of the body types in [`super::model`] — the same
//! types the handlers read and write, so the document cannot drift from the wire — and served
//! at `/openapi.json` by [`document`].
//!
//! Dependencies point one way: this module names the handlers; no handler names this module.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::handlers;
use super::model::{
    ClusterJson, CustomerInput, CustomerJson, CustomerPatchInput, LeaseJson, ListResponse,
    MemberJson, PingJson, PlacementJson, ShardJson, ShardMapJson,
};
use crate::events::{ClusterEvent, EventKind};

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "customer-cluster",
        description = "Customer CRUD served by any node of the cluster; each customer lives on one owner node. Responses carry X-Owner-Node (whose actor served it) and X-Entry-Node (who received it).",
    ),
    paths(
        handlers::create,
        handlers::list,
        handlers::get_one,
        handlers::replace,
        handlers::patch,
        handlers::delete,
        handlers::placement,
        handlers::cluster,
        handlers::ping,
        super::events::shards,
        super::events::events,
        handlers::health,
        handlers::ready,
        handlers::metrics,
        document,
    ),
    components(schemas(
        CustomerJson,
        CustomerInput,
        CustomerPatchInput,
        ListResponse,
        ClusterJson,
        MemberJson,
        PlacementJson,
        LeaseJson,
        PingJson,
        ShardMapJson,
        ShardJson,
        ClusterEvent,
        EventKind,
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&BearerAuth, &ClosedPatch),
    tags((name = "customers", description = "Customer CRUD"), (name = "cluster", description = "Cluster and node state"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// `CustomerPatchInput` is read from a parsed document rather than derived with serde (merge
/// patch needs absent and null told apart), so no `deny_unknown_fields` tells utoipa that an
/// unknown member is refused (422): state it here.
struct ClosedPatch;

impl Modify for ClosedPatch {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        let patch = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("CustomerPatchInput"));
        if let Some(RefOr::T(Schema::Object(object))) = patch {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// The document as served.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, exactly as served.
///
/// utoipa 5.5 serializes response links' `operationId`, `operationRef` and `requestBody` in
/// snake case, which OpenAPI clients do not read (schemathesis fails on the first link); the
/// keys are renamed here, the one place the document becomes JSON.
pub fn document_json() -> Value {
    let mut doc = serde_json::to_value(spec()).unwrap_or(Value::Null);
    let responses = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|methods| methods.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(Value::as_object_mut)
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response.get_mut("links").and_then(Value::as_object_mut);
        for link in links.into_iter().flat_map(|l| l.values_mut()) {
            let Some(link) = link.as_object_mut() else {
                continue;
            };
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
    doc
}

/// `GET /openapi.json` — the API description, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "cluster", operation_id = "openapi",
    responses((status = 200, description = "This document")))]
pub async fn document() -> Response {
    Json(document_json()).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    fn schema(doc: &Value, name: &str) -> Value {
        doc["components"]["schemas"][name].clone()
    }

    fn parameter(doc: &Value, path: &str, method: &str, name: &str) -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p["schema"].clone())
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
    }

    #[test]
    fn parameters_state_the_rules_the_server_enforces() {
        let doc = super::document_json();
        for method in ["get", "put", "patch", "delete"] {
            let id = parameter(&doc, "/v1/customers/{id}", method, "id");
            assert_eq!(id["format"], "uuid", "{method}");
        }
        let limit = parameter(&doc, "/v1/customers", "get", "limit");
        assert_eq!(limit["type"], "integer", "{limit}");
        assert_eq!(
            (limit["minimum"].clone(), limit["maximum"].clone()),
            (json!(1), json!(1000))
        );
        assert_eq!(
            parameter(&doc, "/v1/customers", "get", "after")["format"],
            "uuid"
        );
        let count = parameter(&doc, "/v1/cluster/ping/{node}", "get", "count");
        assert_eq!(count["maximum"], json!(super::handlers::MAX_PINGS));
        assert_eq!(count["minimum"], json!(1));
        let node = parameter(&doc, "/v1/cluster/ping/{node}", "get", "node");
        assert_eq!(node["pattern"], "^[A-Za-z0-9._-]{1,64}$");
        let ping = &doc["paths"]["/v1/cluster/ping/{node}"]["get"]["responses"];
        assert!(
            ping.get("404").is_some(),
            "a non-member is documented as 404"
        );
        for method in ["put", "patch", "delete"] {
            let if_match = parameter(&doc, "/v1/customers/{id}", method, "If-Match");
            assert!(if_match["pattern"].is_string(), "{method}: {if_match}");
        }
    }

    #[test]
    fn a_create_links_to_the_operations_on_the_created_customer_in_openapi_spelling() {
        let doc = super::document_json();
        let links = &doc["paths"]["/v1/customers"]["post"]["responses"]["201"]["links"];
        let links = links.as_object().expect("links on 201");
        let operation_ids: Vec<&str> = links
            .values()
            .map(|l| l["operationId"].as_str().expect("operationId, camel case"))
            .collect();
        for op in ["get_one", "replace", "patch", "delete"] {
            assert!(operation_ids.contains(&op), "{op}: {links:?}");
        }
        assert!(links.values().all(|l| l.get("operation_id").is_none()));
        assert!(
            links
                .values()
                .all(|l| l["parameters"]["id"] == "$response.body#/id")
        );
    }

    #[test]
    fn request_bodies_are_described_by_the_types_handlers_parse() {
        let doc = super::document_json();
        let input = schema(&doc, "CustomerInput");
        assert_eq!(input["required"], json!(["name", "email"]));
        assert_eq!(input["properties"]["name"]["type"], "string");
        assert_eq!(
            input["properties"]["phone"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(input["additionalProperties"], false);
        let patch = schema(&doc, "CustomerPatchInput");
        assert!(patch.get("required").is_none(), "{patch}");
        assert_eq!(
            patch["additionalProperties"], false,
            "unknown members are 422"
        );
        for member in ["name", "email"] {
            assert_eq!(patch["properties"][member]["type"], "string", "{member}");
        }
        for member in ["phone", "address"] {
            assert_eq!(
                patch["properties"][member]["type"],
                json!(["string", "null"]),
                "{member}"
            );
        }
        let body = &doc["paths"]["/v1/customers/{id}"]["patch"]["requestBody"]["content"];
        assert_eq!(
            body["application/merge-patch+json"]["schema"]["$ref"],
            "#/components/schemas/CustomerPatchInput"
        );
        for (body, field) in [(&input, "name"), (&input, "email"), (&patch, "phone")] {
            let pattern = body["properties"][field]["pattern"].as_str().unwrap_or("");
            assert!(
                pattern.starts_with('^') && pattern.ends_with('$'),
                "{field}: {pattern}"
            );
        }
        assert_eq!(input["properties"]["id"]["format"], "uuid");
        let body = &doc["paths"]["/v1/customers"]["post"]["requestBody"]["content"];
        assert_eq!(
            body["application/json"]["schema"]["$ref"],
            "#/components/schemas/CustomerInput"
        );
    }
}
