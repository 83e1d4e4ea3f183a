//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated from the handlers'
//! own `#[utoipa::path]` annotations and types when the router is built (see
//! `server::api`), so the document and the routes cannot drift apart.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    serde_json::to_string_pretty(&document()).expect("the OpenAPI document serialises")
});

/// The OpenAPI description of every route the server serves.
pub fn document() -> OpenApi {
    super::api().into_openapi()
}

/// What the document says besides its paths: the title, version and the admin token scheme.
pub(super) fn base() -> OpenApi {
    let admin = SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The token given to `foldhost serve --admin-token` (or FOLDHOST_ADMIN_TOKEN)",
            ))
            .build(),
    );
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("foldhost")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "An event-sourcing host whose aggregates and projections are sandboxed \
                     WebAssembly components. Errors are JSON: `{\"error\": message}`.",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme("admin", admin)
                .build(),
        ))
        .build()
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
pub(super) async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
