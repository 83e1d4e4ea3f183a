//! `foldhost backup` and `foldhost restore`: a consistent copy of a redb journal, taken from a
//! running server (or offline), and putting it back into a data directory.
//!
//! A backup directory holds `journal.redb` (a journal file, as in a data directory) and
//! `backup.json` (what it holds: its last position, events and bytes). Both are written
//! atomically and durably: a backup that is there is complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;

use super::client::{Remote, print_pretty};
use super::token::AdminToken;
use crate::durable;
use crate::journal::{BackupReport, Journal};
use crate::server::{BACKUP_POSITION, JOURNAL_FILE};

/// The description written beside a backup's journal file.
const MANIFEST: &str = "backup.json";

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

/// `backup`: downloads a backup from the server's `GET /admin/backup` (or writes one from
/// `--data`), checks it, and records what it holds.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let file = args.to.join(JOURNAL_FILE);
    if file.exists() {
        bail!("{} already holds a backup", args.to.display());
    }
    durable::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let report = match &args.data {
        Some(data) => offline(data, &file).await?,
        None => download(&args, &file).await?,
    };
    durable::write_atomically(
        &args.to.join(MANIFEST),
        &serde_json::to_vec_pretty(&report)?,
    )
    .with_context(|| format!("writing {}", args.to.join(MANIFEST).display()))?;
    print_pretty(&serde_json::to_value(report)?)?;
    Ok(())
}

async fn offline(data: &Path, file: &Path) -> anyhow::Result<BackupReport> {
    let source = data.join(JOURNAL_FILE);
    let journal = tokio::task::block_in_place(|| super::offline::open_to_read(&source))?;
    let report = journal.backup(file).await?;
    tokio::task::spawn_blocking(move || drop(journal)).await?;
    Ok(report)
}

async fn download(args: &BackupArgs, file: &Path) -> anyhow::Result<BackupReport> {
    let request = args.remote.request(Method::GET, &["admin", "backup"])?;
    let mut response = args
        .admin
        .sign(request)?
        .send()
        .await
        .context("the server did not answer")?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no message");
        bail!("the server answered {status}: {message}");
    }
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

/// `restore`: checks a backup and copies its journal into an empty data directory, durably;
/// a server started there serves the backup's log.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let source = args.from.join(JOURNAL_FILE);
    let report = Journal::inspect(&source)
        .with_context(|| format!("{} is not a readable backup", source.display()))?;
    let target = args.data.join(JOURNAL_FILE);
    if target.exists() {
        bail!(
            "{} already holds a journal: restore into an empty data directory",
            args.data.display()
        );
    }
    durable::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    // Not replacing: a server started on the data directory during the copy may have
    // created a journal there since the check above.
    durable::create_with(&target, |out| -> std::io::Result<()> {
        std::io::copy(&mut std::fs::File::open(&source)?, out)?;
        Ok(())
    })
    .map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} appeared while the backup was copied (was a server started on {}?): it is left \
             as it is, nothing was restored",
            target.display(),
            args.data.display()
        ),
        _ => anyhow::Error::new(error).context(format!("writing {}", target.display())),
    })?;
    print_pretty(&serde_json::to_value(report)?)?;
    Ok(())
}
