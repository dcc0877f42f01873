//! The OpenAPI 3.1 description of the API, generated from the handlers' `#[utoipa::path]`
//! attributes and the JSON types' `ToSchema` derives, served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::{ErrorBody, ErrorDetail};
use super::handlers;
use super::json::{ClusterJson, CustomerJson, ListResponse, MemberJson, PingJson};

/// Body of POST and PUT (documentation shape of [`super::json::FieldsBody`]).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CustomerInput {
    /// Optional client-chosen UUID (POST only): a retried create with the same id and body
    /// succeeds once.
    id: Option<String>,
    /// Display name, 1..=200 characters.
    name: String,
    /// Email address, unique (case-insensitive).
    email: String,
    /// Phone number: digits, spaces and `+-().`, at most 32 characters.
    phone: Option<String>,
    /// Postal address, at most 500 characters.
    address: Option<String>,
}

/// A JSON merge patch (RFC 7396) of a customer: absent members are kept, `null` clears an
/// optional field, a string replaces. `name` and `email` cannot be null.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CustomerPatchInput {
    /// New name.
    name: Option<String>,
    /// New email.
    email: Option<String>,
    /// New phone, or null to remove it.
    phone: Option<String>,
    /// New address, or null to remove it.
    address: Option<String>,
}

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
        handlers::cluster,
        handlers::ping,
        handlers::health,
        handlers::ready,
        handlers::metrics,
        handlers::openapi,
    ),
    components(schemas(
        CustomerJson,
        CustomerInput,
        CustomerPatchInput,
        ListResponse,
        ClusterJson,
        MemberJson,
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
