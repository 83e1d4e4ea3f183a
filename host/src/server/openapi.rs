//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated from the handlers'
//! own `#[utoipa::path]` annotations and types when the router is built (see
//! `server::api`), so the document and the routes cannot drift apart. The statuses a request
//! body can be refused with before its handler runs are added to every route that takes one
//! ([`with_body_refusals`]).

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
};

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    serde_json::to_string_pretty(&document()).expect("the OpenAPI document serialises")
});

/// The OpenAPI description of every route the server serves.
pub fn document() -> OpenApi {
    with_body_refusals(super::api().into_openapi())
}

/// The statuses [`bodies`](super::bodies) refuses a request body with while reading it, before
/// the handler sees it, and whether the refusal carries `Retry-After`.
fn body_refusals() -> [(&'static str, String, bool); 4] {
    let json_mib = super::MAX_JSON_BODY >> 20;
    let upload_mib = super::MAX_PLUGIN_BODY >> 20;
    [
        (
            "408",
            "The body stalled (nothing of it arrived for `--read-timeout`) or arrived slower \
             than `--body-min-rate`"
                .to_owned(),
            false,
        ),
        (
            "413",
            format!(
                "The body is larger than this route takes ({json_mib} MiB of JSON, \
                 {upload_mib} MiB for a plugin upload), than `--body-budget` or than one \
                 client's `--body-budget-per-client`"
            ),
            false,
        ),
        (
            "429",
            "This client's bodies being received or handled hold its `--body-budget-per-client`"
                .to_owned(),
            true,
        ),
        (
            "503",
            "The bodies being received or handled hold the host's `--body-budget`".to_owned(),
            true,
        ),
    ]
}

/// `document` with [`body_refusals`] on every operation that takes a request body. A status
/// the operation already documents for its own reasons (503: the write queue is full) keeps
/// them and gains the body's.
fn with_body_refusals(mut document: OpenApi) -> OpenApi {
    for item in document.paths.paths.values_mut() {
        let PathItem {
            get,
            put,
            post,
            delete,
            options,
            head,
            patch,
            trace,
            ..
        } = item;
        let operations = [get, put, post, delete, options, head, patch, trace];
        for operation in operations.into_iter().flatten() {
            if operation.request_body.is_some() {
                add_body_refusals(operation);
            }
        }
    }
    document
}

fn add_body_refusals(operation: &mut Operation) {
    for (status, why, retry) in body_refusals() {
        let response = operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                let error = Content::new(Some(Ref::from_schema_name("ApiError")));
                ResponseBuilder::new()
                    .content("application/json", error)
                    .into()
            });
        let RefOr::T(response) = response else {
            unreachable!("the handlers' annotations write their responses inline");
        };
        response.description = match response.description.as_str() {
            "" => why,
            own => format!("{own}. {why}"),
        };
        if retry {
            let seconds = HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before trying again"));
            response
                .headers
                .insert("Retry-After".to_owned(), seconds.build());
        }
    }
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
