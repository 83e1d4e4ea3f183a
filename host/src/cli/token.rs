//! Where the admin token comes from: the environment or a file, so it need not appear in argv
//! (which every user of the machine can read in `ps`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::RequestBuilder;

/// `--admin-token` / `--admin-token-file`, shared by `serve` and every client subcommand that
/// calls an admin endpoint.
#[derive(Debug, Args)]
pub struct AdminToken {
    /// Bearer token for the admin endpoints (see README → HTTP API). Prefer the environment or
    /// --admin-token-file: arguments are visible to every user in `ps`.
    #[arg(
        long,
        env = "FOLDHOST_ADMIN_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// A file holding the admin token (surrounding whitespace and the final newline are
    /// ignored).
    #[arg(
        long,
        env = "FOLDHOST_ADMIN_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    admin_token_file: Option<PathBuf>,
}

impl AdminToken {
    /// The token, if one was given; an empty one counts as none. Fails when the file cannot
    /// be read or holds no token.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token file {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                bail!("the admin token file {} is empty", path.display());
            }
            return Ok(Some(token.to_owned()));
        }
        Ok(self.admin_token.clone().filter(|token| !token.is_empty()))
    }

    /// `request` with the token as its bearer credentials, if one was given.
    pub fn sign(&self, request: RequestBuilder) -> anyhow::Result<RequestBuilder> {
        Ok(match self.resolve()? {
            Some(token) => request.bearer_auth(token),
            None => request,
        })
    }
}
