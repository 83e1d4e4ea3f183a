//! Listing, uploading and unloading plugins; changes need the admin token.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::bodies::BodyHold;
use super::errors::ApiError;
use super::extract::{JsonBody, Path, Query};
use crate::journal::ParkedEvent;
use crate::runtime::{CompilingInfo, FailurePolicy, ParkReport, PluginInfo, to_the_end};

/// Proof that a request carries the configured admin token (`Authorization: Bearer <token>`).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = state.admin_token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin endpoints are disabled: start the server with --admin-token \
                 (or FOLDHOST_ADMIN_TOKEN) to enable them",
            ));
        };
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match given {
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(Admin),
            Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token")),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the header Authorization: Bearer <admin token>",
            )),
        }
    }
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// One row of `GET /plugins`: a loaded plugin, or one being compiled.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Listed {
    Loaded(PluginInfo),
    Compiling(CompilingInfo),
}

/// `GET /plugins`: the loaded plugins by name, then those being compiled.
#[utoipa::path(get, path = "/plugins", tag = "plugins", responses((status = 200, body = Vec<Listed>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<Listed>> {
    let loaded = state.runtime.list().into_iter().map(Listed::Loaded);
    let compiling = state.runtime.compiling().into_iter().map(Listed::Compiling);
    Json(loaded.chain(compiling).collect())
}

/// `PUT /plugins/{name}`: installs (or replaces) a plugin from the component (or core module)
/// in the body. The component must describe itself as `name`.
#[utoipa::path(put, path = "/plugins/{name}", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component or core module"),
    responses(
        (status = 200, description = "Loaded; a projection catches up in the background", body = PluginInfo),
        (status = 400, description = "Not a valid plugin, or named otherwise", body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError),
        (status = 500, description = "The host failed loading it, not the plugin (the message names why); whatever was loaded keeps serving", body = ApiError),
        (status = 503, description = "The host failed loading it for a reason that may pass (memory ran out, the compiler was killed): try again after `Retry-After`", body = ApiError),
    ))]
pub async fn put(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Extension(hold): Extension<BodyHold>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PluginInfo>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    let bytes = body.map_err(super::bodies::refused)?;
    // Validated before it is installed: a component named otherwise must not replace anything.
    // The compile, the install and the upload's keeping run to their end even if the client
    // leaves (so the upload kept for the next start is the build serving), holding the body's
    // share of the body budget until then.
    let runtime = state.runtime.clone();
    let installed = to_the_end(async move {
        let _hold = hold;
        let plugin = runtime.compile(bytes.clone(), &name).await?;
        if plugin.name() != name {
            return Err(ApiError::bad_request(format!(
                "the component describes itself as {:?}, not {name:?}; upload it to /plugins/{}",
                plugin.name(),
                plugin.name()
            )));
        }
        Ok(runtime.install_upload(plugin, bytes).await?)
    });
    Ok(Json(installed.await?))
}

/// `?drop_data=true` also deletes the plugin's snapshots and checkpoints.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UnloadQuery {
    #[serde(default)]
    drop_data: bool,
}

/// What `DELETE /plugins/{name}` did.
#[derive(Serialize, ToSchema)]
pub struct Unloaded {
    unloaded: String,
    dropped_data: bool,
}

/// `DELETE /plugins/{name}`: stops and forgets a plugin. Its snapshots and checkpoints stay
/// (reloading the same build resumes from them) unless `?drop_data=true`.
#[utoipa::path(delete, path = "/plugins/{name}", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path), UnloadQuery),
    responses((status = 200, body = Unloaded), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Query(query): Query<UnloadQuery>,
) -> Result<Json<Unloaded>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    state.runtime.unload(&name, query.drop_data).await?;
    Ok(Json(Unloaded {
        unloaded: name,
        dropped_data: query.drop_data,
    }))
}

/// Parked events one page lists unless `limit` says otherwise.
const PARKED_PAGE: usize = 100;
/// The most parked events one page lists.
const MAX_PARKED_PAGE: usize = 1000;

/// `?after=&limit=`: a page of parked events.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    /// The page starts after this position (the last one of the page before); 0 by default.
    #[serde(default)]
    after: u64,
    /// Events on the page: 100 by default, at most 1,000.
    limit: Option<usize>,
}

/// `GET /plugins/{name}/parked?after=&limit=`: the events a projection skipped because it
/// could not fold them, by position, with the reason, a page at a time (a client may make a
/// projection park any number of events).
#[utoipa::path(get, path = "/plugins/{name}/parked", tag = "plugins",
    params(("name" = String, Path), ParkedQuery),
    responses((status = 200, body = Vec<ParkedEvent>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn parked(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ParkedQuery>,
) -> Result<Json<Vec<ParkedEvent>>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    let limit = query.limit.unwrap_or(PARKED_PAGE).clamp(1, MAX_PARKED_PAGE);
    Ok(Json(state.runtime.parked(&name, query.after, limit).await?))
}

/// `POST /plugins/{name}/parked/replay`: folds the parked events again, at the head; those
/// that fold are parked no more.
#[utoipa::path(post, path = "/plugins/{name}/parked/replay", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = ParkReport), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn replay_parked(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<ParkReport>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    Ok(Json(state.runtime.replay_parked(&name).await?))
}

/// `POST /plugins/{name}/restart`: a projection resumes from its checkpoint.
#[utoipa::path(post, path = "/plugins/{name}/restart", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn restart(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    Ok(Json(state.runtime.restart(&name).await?))
}

/// `POST /plugins/{name}/reset`: a projection rebuilds from position 1 in the background and
/// takes over at the head.
#[utoipa::path(post, path = "/plugins/{name}/reset", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn reset(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    Ok(Json(state.runtime.reset(&name)?))
}

/// `PUT /plugins/{name}/policy` body: what a projection does with an event it cannot fold.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    policy: FailurePolicy,
}

/// `PUT /plugins/{name}/policy`: `{"policy": "park" | "stop"}`.
#[utoipa::path(put, path = "/plugins/{name}/policy", tag = "plugins", security(("admin" = [])),
    params(("name" = String, Path)), request_body = PolicyBody,
    responses((status = 200, body = PluginInfo), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn set_policy(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Json<PluginInfo>, ApiError> {
    tracing::Span::current().record("plugin", name.as_str());
    state.runtime.set_policy(&name, body.policy)?;
    Ok(Json(state.runtime.info(&name)?))
}
