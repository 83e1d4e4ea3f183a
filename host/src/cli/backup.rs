//! `foldhost backup` and `foldhost restore`: a consistent copy of a redb journal and of the
//! plugins uploaded to the host, taken from a running server (or offline), and putting them
//! back into a data directory.
//!
//! A backup directory holds `journal.redb` (a journal file, as in a data directory),
//! `uploads/` (the uploads kept, as in a data directory) and `backup.json` (what it holds: the
//! journal's last position, events and bytes, and the uploads' plugin names). Every file is
//! written atomically and durably, the manifest last: a backup that has one is complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::client::{Remote, print_pretty};
use super::token::AdminToken;
use crate::durable;
use crate::journal::{BackupReport, Journal};
use crate::runtime::Uploads;
use crate::server::{BACKUP_POSITION, JOURNAL_FILE, MAX_PLUGIN_BODY, UPLOADS};

/// The description written beside a backup's journal file.
const MANIFEST: &str = "backup.json";

/// What a backup holds: `backup.json`, and what `backup` and `restore` print.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    journal: BackupReport,
    /// The plugins whose uploads came along, by name (none in a backup from before uploads
    /// were backed up).
    #[serde(default)]
    uploads: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Directory to write the backup into (created if missing; must not hold one yet).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Back up this data directory directly instead of asking the server (no server may be
    /// running on it).
    #[arg(long, value_name = "DIR", value_parser = super::parse_data_dir)]
    data: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminToken,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `foldhost backup`.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The data directory to restore into; it must not hold a journal yet.
    #[arg(long, env = "FOLDHOST_DATA", default_value = "./foldhost-data", value_parser = super::parse_data_dir)]
    data: PathBuf,
}

/// `backup`: downloads a backup from the server's `GET /admin/backup` and the uploads it keeps
/// (or copies both from `--data`), checks it, and records what it holds.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let file = args.to.join(JOURNAL_FILE);
    if file.exists() {
        match args.to.join(MANIFEST).exists() {
            true => bail!("{} already holds a backup", args.to.display()),
            false => bail!(
                "{} holds {JOURNAL_FILE} but no {MANIFEST}: an incomplete backup, or a data \
                 directory; back up into another directory",
                args.to.display()
            ),
        }
    }
    durable::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let kept = open_uploads(&args.to.join(UPLOADS))?;
    let manifest = match &args.data {
        Some(data) => Manifest {
            journal: offline(data, &file).await?,
            uploads: tokio::task::block_in_place(|| {
                let dir = data.join(UPLOADS);
                let names = kept_in(&dir)?;
                copy_uploads(&dir, &names, &kept).map(|()| names)
            })?,
        },
        None => Manifest {
            journal: download(&args, &file).await?,
            uploads: download_uploads(&args, &kept).await?,
        },
    };
    durable::write_atomically(
        &args.to.join(MANIFEST),
        &serde_json::to_vec_pretty(&manifest)?,
    )
    .with_context(|| format!("writing {}", args.to.join(MANIFEST).display()))?;
    print_pretty(&serde_json::to_value(manifest)?)?;
    Ok(())
}

fn open_uploads(dir: &Path) -> anyhow::Result<Uploads> {
    Uploads::open(dir).with_context(|| format!("opening {}", dir.display()))
}

/// Copies the uploads of `names` kept in directory `dir` into `to`; each must be there.
fn copy_uploads(dir: &Path, names: &[String], to: &Uploads) -> anyhow::Result<()> {
    let from = Uploads::in_dir(dir);
    for name in names {
        let file = from
            .file(name)?
            .with_context(|| format!("{} holds no upload of {name}", dir.display()))?;
        to.put_file(name, &file)
            .with_context(|| format!("copying the upload of {name} from {}", dir.display()))?;
    }
    Ok(())
}

/// The plugins with an upload kept in directory `dir`, if there is one.
fn kept_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(Uploads::in_dir(dir).names()?)
}

/// Downloads the uploads the server keeps (`GET /admin/uploads`) into `to`; their names. One
/// unloaded since the list is left out.
async fn download_uploads(args: &BackupArgs, to: &Uploads) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = match admin_get(args, &["admin", "uploads"]).await {
        Ok(response) => response.json().await?,
        Err(error) if is_not_found(&error) => {
            eprintln!(
                "warning: this server cannot list its uploads (GET /admin/uploads is newer): any \
                 plugins uploaded to it are NOT in this backup; copy its data directory's \
                 uploads/*.upload into the backup's uploads/ by hand"
            );
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    let mut kept = Vec::new();
    for name in names {
        let file = match admin_get(args, &["admin", "uploads", &name]).await {
            Ok(response) => read_capped(response, MAX_KEPT_FILE)
                .await
                .with_context(|| format!("downloading the upload of {name}"))?,
            Err(error) if is_not_found(&error) => continue,
            Err(error) => return Err(error),
        };
        tokio::task::block_in_place(|| to.put_file(&name, &file))
            .with_context(|| format!("writing the upload of {name}"))?;
        kept.push(name);
    }
    Ok(kept)
}

/// The largest kept upload's file: the largest upload the server takes, and its header line.
const MAX_KEPT_FILE: usize = MAX_PLUGIN_BODY + 1024;

/// The body of `response`, refused once it passes `limit` bytes.
async fn read_capped(mut response: Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("the server sent more than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The server's answer to an admin `GET` of `segments`; an error status is an error naming
/// the server's message (a [`StatusError`]).
async fn admin_get(args: &BackupArgs, segments: &[&str]) -> anyhow::Result<Response> {
    let request = args.remote.request(Method::GET, segments)?;
    let response = args
        .admin
        .sign(request)?
        .send()
        .await
        .context("the server did not answer")?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["error"].as_str().unwrap_or("no message").to_owned();
    Err(StatusError { status, message }.into())
}

/// A server's answer with an error status.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {status}: {message}")]
struct StatusError {
    status: StatusCode,
    message: String,
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<StatusError>()
        .is_some_and(|e| e.status == StatusCode::NOT_FOUND)
}

async fn offline(data: &Path, file: &Path) -> anyhow::Result<BackupReport> {
    let source = data.join(JOURNAL_FILE);
    let journal = tokio::task::block_in_place(|| super::offline::open_to_read(&source))?;
    let report = journal.backup(file).await?;
    tokio::task::spawn_blocking(move || drop(journal)).await?;
    Ok(report)
}

async fn download(args: &BackupArgs, file: &Path) -> anyhow::Result<BackupReport> {
    let mut response = admin_get(args, &["admin", "backup"]).await?;
    let position: u64 = response
        .headers()
        .get(BACKUP_POSITION)
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .context("the server sent a backup without its position")?;
    // The file is written on this (blocking) thread, the download is read from the runtime.
    tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        durable::replace_with(file, |out| -> anyhow::Result<()> {
            while let Some(chunk) = runtime.block_on(response.chunk())? {
                out.write_all(&chunk)?;
            }
            Ok(())
        })
    })
    .with_context(|| format!("writing {}", file.display()))?;
    let report = Journal::inspect(file).context("the downloaded backup does not open")?;
    if report.position != position {
        bail!(
            "the downloaded backup ends at position {}, the server announced {position}",
            report.position
        );
    }
    Ok(report)
}

/// What every failure of `restore` after it started copying says: the copies made so far are
/// the backup's own, which a second run takes as they are.
const RUN_AGAIN: &str =
    "the restore did not finish: run the same `foldhost restore` again to finish it";

/// `restore`: checks a backup and copies its uploads and then its journal into a data directory
/// without a journal, durably; a server started there serves the backup's log and loads its
/// uploads. The data directory may hold uploads only if they are this backup's, byte for byte:
/// what a restore that did not finish left, which running it again finishes.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let manifest: Manifest = std::fs::read(args.from.join(MANIFEST))
        .map_err(anyhow::Error::new)
        .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
        .with_context(|| {
            format!(
                "{} is not a complete backup (its {MANIFEST} is missing or unreadable)",
                args.from.display()
            )
        })?;
    let source = args.from.join(JOURNAL_FILE);
    let report = Journal::inspect(&source)
        .with_context(|| format!("{} is not a readable backup", source.display()))?;
    if report != manifest.journal {
        bail!(
            "{} holds {report:?}, not what its {MANIFEST} says ({:?})",
            source.display(),
            manifest.journal
        );
    }
    let target = args.data.join(JOURNAL_FILE);
    let uploads_dir = args.data.join(UPLOADS);
    let from_uploads = args.from.join(UPLOADS);
    if target.exists() {
        bail!(
            "{} already holds a journal: restore into an empty data directory",
            args.data.display()
        );
    }
    let foreign = tokio::task::block_in_place(|| {
        foreign_upload(&uploads_dir, &from_uploads, &manifest.uploads)
    })?;
    if let Some(name) = foreign {
        bail!(
            "{} already holds an upload of {name} that is not this backup's: restore into an \
             empty data directory",
            args.data.display()
        );
    }
    durable::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    // Before the journal, whose copy completes the restore.
    tokio::task::block_in_place(|| {
        let kept = open_uploads(&uploads_dir)?;
        copy_uploads(&from_uploads, &manifest.uploads, &kept)
    })
    .context(RUN_AGAIN)?;
    // Not replacing: a server started on the data directory during the copy may have
    // created a journal there since the check above.
    durable::create_with(&target, |out| -> std::io::Result<()> {
        std::io::copy(&mut std::fs::File::open(&source)?, out)?;
        Ok(())
    })
    .map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => {
            let uploads = match manifest.uploads.is_empty() {
                true => String::new(),
                false => format!(" (its uploads were copied into {})", uploads_dir.display()),
            };
            anyhow::anyhow!(
                "{} appeared while the backup was copied (was a server started on {}?): it is \
                 left as it is, and the backup's journal was not restored{uploads}",
                target.display(),
                args.data.display(),
            )
        }
        _ => anyhow::Error::new(error)
            .context(format!("writing {}", target.display()))
            .context(RUN_AGAIN),
    })?;
    print_pretty(&serde_json::to_value(manifest)?)?;
    Ok(())
}

/// The first upload kept in directory `dir` that a restore of the backup whose uploads are
/// `names`, in directory `from`, did not leave: another plugin's, or other bytes.
fn foreign_upload(dir: &Path, from: &Path, names: &[String]) -> anyhow::Result<Option<String>> {
    let (kept, backup) = (Uploads::in_dir(dir), Uploads::in_dir(from));
    for name in kept_in(dir)? {
        if !names.contains(&name) || kept.file(&name)? != backup.file(&name)? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}
