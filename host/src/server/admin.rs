//! Maintenance, for the admin: scavenging the journal, and online backups of it and of the
//! plugins uploaded to the host.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::errors::ApiError;
use super::extract::Path;
use super::plugins::Admin;
use super::{AppState, JOURNAL_FILE};
use crate::journal::ScavengeReport;
use crate::runtime::Uploads;

/// Header of a backup download: every event up to this position is in it, none after.
pub const BACKUP_POSITION: &str = "foldhost-backup-position";
/// Bytes read from a backup file per chunk of the download.
const CHUNK: usize = 256 << 10;
/// Free bytes a backup leaves on the data directory's filesystem besides its copy: room for the
/// journal to grow while the copy pins the pages it reads.
const BACKUP_MARGIN: u64 = 64 << 20;
/// Seconds a backup refused while another runs asks the client to wait.
const BACKUP_RETRY: u64 = 10;
/// What failed, in the answer to a failure reading the data directory.
const STAGING: &str = "staging the backup";
const LISTING: &str = "listing the uploads kept";
const READING: &str = "reading the upload kept";

/// `POST /admin/scavenge`: removes the events no reader sees any more and compacts the storage
/// (reads and appends pause while redb compacts; PostgreSQL locks the tables it rewrites).
#[utoipa::path(post, path = "/admin/scavenge", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = ScavengeReport), (status = 401, body = ApiError)))]
pub async fn scavenge(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<ScavengeReport>, ApiError> {
    let report = state.runtime.journal().scavenge().await?;
    Ok(Json(report))
}

/// `GET /admin/backup`: a consistent copy of the redb journal, taken while the server keeps
/// serving, as a redb file (`foldhost restore` puts it into a data directory). Staged in an
/// unnamed file in the data directory, so nothing is left behind however the request or the
/// process ends. One at a time (503 while another is copied or downloaded), and refused with
/// 507 when the data directory's filesystem has less room than the journal takes, and a margin.
#[utoipa::path(get, path = "/admin/backup", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The redb file; header `foldhost-backup-position` says up to where",
            body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 401, body = ApiError), (status = 501, description = "PostgreSQL journal", body = ApiError),
        (status = 503, description = "Another backup is under way (`Retry-After`)", body = ApiError),
        (status = 507, description = "Too little free space to stage the copy", body = ApiError),
    ))]
pub async fn backup(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let Ok(permit) = state.backups.clone().try_acquire_owned() else {
        return Err(ApiError::busy(
            "another backup is being taken or downloaded: one at a time",
            BACKUP_RETRY,
        ));
    };
    check_room(&state.data_dir)?;
    let staged = tempfile::tempfile_in(&state.data_dir).map_err(|e| internal(STAGING, e))?;
    // A task of its own holds the permit until the copy ends, even if the client goes away.
    let copy = tokio::spawn(async move {
        let copied = state.runtime.journal().backup_into(staged).await;
        (copied, permit)
    });
    let (copied, permit) = copy.await.map_err(|e| internal(STAGING, e.into()))?;
    let (file, report) = copied?;
    let mut file = tokio::fs::File::from_std(file);
    file.rewind().await.map_err(|e| internal(STAGING, e))?;
    // The download holds the permit until it has read the last byte: the copy takes the room
    // until then, and the next backup may start as soon as the client has this one.
    let held = Some((file, permit, report.bytes));
    let chunks = futures_util::stream::unfold(held, |held| async move {
        let (mut file, permit, left) = held?;
        let mut chunk = Vec::with_capacity(CHUNK);
        match (&mut file).take(CHUNK as u64).read_to_end(&mut chunk).await {
            Ok(0) => None,
            Ok(read) => {
                let left = left.saturating_sub(read as u64);
                let held = (left > 0).then_some((file, permit, left));
                Some((Ok(Bytes::from(chunk)), held))
            }
            Err(error) => Some((Err(error), Some((file, permit, left)))),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(report.bytes));
    headers.insert(BACKUP_POSITION, HeaderValue::from(report.position));
    tracing::info!(?report, "backup sent");
    Ok(response)
}

/// `GET /admin/uploads`: the plugins uploaded through `PUT /plugins/{name}` whose builds the
/// data directory keeps (they load again at every start), by name, for `foldhost backup`.
#[utoipa::path(get, path = "/admin/uploads", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = Vec<String>), (status = 401, body = ApiError)))]
pub async fn uploads(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<String>>, ApiError> {
    let names = on_uploads(&state, LISTING, |uploads| uploads.names()).await?;
    Ok(Json(names))
}

/// `GET /admin/uploads/{name}`: the kept upload of plugin `name` as the data directory holds
/// it (a header line, then the component), which `foldhost restore` puts back as it was.
#[utoipa::path(get, path = "/admin/uploads/{name}", tag = "admin", security(("admin" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "The kept file", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 401, body = ApiError), (status = 404, body = ApiError),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let read = name.clone();
    let file = on_uploads(&state, READING, move |uploads| uploads.file(&read))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no upload of plugin {name:?} is kept")))?;
    let mut response = Response::new(Body::from(file));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// `read` of the uploads kept, on the blocking pool (nothing, without a data directory keeping
/// them); a failure is the host's, `doing` it.
async fn on_uploads<T: Default + Send + 'static>(
    state: &AppState,
    doing: &str,
    read: impl FnOnce(&Uploads) -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(uploads) = state.runtime.uploads().cloned() else {
        return Ok(T::default());
    };
    let read = tokio::task::spawn_blocking(move || read(&uploads)).await;
    read.map_err(std::io::Error::from)
        .and_then(|read| read)
        .map_err(|e| internal(doing, e))
}

/// Refuses a backup with 507 when the filesystem of `data_dir` has less room than its journal
/// file takes (what the copy may take) and [`BACKUP_MARGIN`]: two copies, or one on a nearly
/// full disk, would otherwise fill it and stop the host.
fn check_room(data_dir: &std::path::Path) -> Result<(), ApiError> {
    let journal = match std::fs::metadata(data_dir.join(JOURNAL_FILE)) {
        Ok(journal) => journal.len(),
        // No journal file (PostgreSQL): nothing to copy, as `backup_into` answers.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(internal(STAGING, error)),
    };
    let free = free_bytes(data_dir).map_err(|e| internal(STAGING, e))?;
    let needed = journal + BACKUP_MARGIN;
    if free < needed {
        let message = format!(
            "too little free space for a backup: {} holds {free} bytes free, and copying the \
             {journal}-byte journal needs {needed} (its size and {BACKUP_MARGIN} to spare)",
            data_dir.display()
        );
        return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message)
            .with("free_bytes", free)
            .with("needed_bytes", needed));
    }
    Ok(())
}

/// The bytes an unprivileged process may still write to the filesystem of `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn internal(doing: &str, error: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{doing}: {error}"),
    )
}
