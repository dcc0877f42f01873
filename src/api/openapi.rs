//! The OpenAPI 3.1 description of the API, generated from the handlers' `#[utoipa::path]`
//! attributes and the `ToSchema` derives of the body types in [`super::model`] — the same
//! types the handlers read and write, so the document cannot drift from the wire — and served
//! at `/openapi.json` by [`document`].
//!
//! Dependencies point one way: this module names the handlers; no handler names this module.

use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::handlers;
use super::model::{
    ClusterJson, CustomerInput, CustomerJson, CustomerPatchInput, LeaseJson, ListResponse,
    MemberJson, PingJson, PlacementJson,
};

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
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&BearerAuth),
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

/// The document as served.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json` — the API description, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "cluster", operation_id = "openapi",
    responses((status = 200, description = "This document")))]
pub async fn document() -> Response {
    Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    fn schema(doc: &Value, name: &str) -> Value {
        doc["components"]["schemas"][name].clone()
    }

    #[test]
    fn request_bodies_are_described_by_the_types_handlers_parse() {
        let doc = serde_json::to_value(super::spec()).unwrap();
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
        for member in ["name", "email", "phone", "address"] {
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
        let body = &doc["paths"]["/v1/customers"]["post"]["requestBody"]["content"];
        assert_eq!(
            body["application/json"]["schema"]["$ref"],
            "#/components/schemas/CustomerInput"
        );
    }
}
