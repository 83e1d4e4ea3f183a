//! The web console: plain HTML, CSS and JavaScript modules embedded in the binary and served
//! at `/` and `/ui/{file}`, with no build step. The pages call the JSON API like any client.
//!
//! To add a file, put it in `assets/` and list it in [`ASSETS`].

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

use super::errors::ApiError;
use super::extract::Path;

/// Every file under `/ui/`, by name: its content type and bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css", include_str!("assets/style.css")),
    ("app.js", "text/javascript", include_str!("assets/app.js")),
    ("api.js", "text/javascript", include_str!("assets/api.js")),
    ("dom.js", "text/javascript", include_str!("assets/dom.js")),
    ("json.js", "text/javascript", include_str!("assets/json.js")),
    (
        "overview.js",
        "text/javascript",
        include_str!("assets/overview.js"),
    ),
    (
        "plugins.js",
        "text/javascript",
        include_str!("assets/plugins.js"),
    ),
    (
        "streams.js",
        "text/javascript",
        include_str!("assets/streams.js"),
    ),
    (
        "aggregate.js",
        "text/javascript",
        include_str!("assets/aggregate.js"),
    ),
    (
        "projection.js",
        "text/javascript",
        include_str!("assets/projection.js"),
    ),
    ("tail.js", "text/javascript", include_str!("assets/tail.js")),
    (
        "openapi.js",
        "text/javascript",
        include_str!("assets/openapi.js"),
    ),
];

/// Scripts only from this server, nothing inline, no plugins or frames: event data shown by
/// the console can never run as code, even if some rendering slipped.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /`: the console's page.
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The web console", content_type = "text/html")))]
pub(super) async fn index() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CONTENT_SECURITY_POLICY, CSP),
            (CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/index.html"),
    )
}

/// `GET /ui/{file}`: the console's scripts and styles.
#[utoipa::path(get, path = "/ui/{file}", tag = "console",
    params(("file" = String, Path)),
    responses((status = 200, description = "A script or style sheet"), (status = 404, body = ApiError)))]
pub(super) async fn asset(Path(file): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::not_found(format!("the console has no file {file:?}")))?;
    Ok((
        [(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "no-cache")],
        *body,
    ))
}
