//! Where the admin token comes from: the environment or a file, so it need not appear in argv
//! (which every user of the machine can read in `ps`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use reqwest::RequestBuilder;

/// `--admin-token` / `--admin-token-file`, shared by `serve` and every client subcommand that
/// calls an admin endpoint. An option given on the command line wins over the environment's
/// other one; both given on the command line, or both set in the environment, are refused. (Checked here: clap's `conflicts_with` counts a value from
/// the environment as given, so it would refuse `--admin-token-file` with
/// `FOLDHOST_ADMIN_TOKEN` set.)
#[derive(Debug)]
pub struct AdminToken {
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
}

/// [`AdminToken`]'s options as clap takes them, from the command line or the environment.
#[derive(Debug, Args)]
struct AdminTokenOptions {
    /// Bearer token for the admin endpoints (see README → HTTP API). Prefer the environment or
    /// --admin-token-file: arguments are visible to every user in `ps`.
    #[arg(
        long,
        env = "FOLDHOST_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
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

impl Args for AdminToken {
    fn augment_args(command: Command) -> Command {
        AdminTokenOptions::augment_args(command)
    }

    fn augment_args_for_update(command: Command) -> Command {
        AdminTokenOptions::augment_args_for_update(command)
    }
}

impl FromArgMatches for AdminToken {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let AdminTokenOptions {
            mut admin_token,
            mut admin_token_file,
        } = AdminTokenOptions::from_arg_matches(matches)?;
        let given = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
        let conflict = |message: &str| Err(clap::Error::raw(ErrorKind::ArgumentConflict, message));
        match (given("admin_token"), given("admin_token_file")) {
            (true, true) => {
                return conflict(
                    "the argument '--admin-token <ADMIN_TOKEN>' cannot be used with \
                     '--admin-token-file <FILE>'\n",
                );
            }
            (true, false) => admin_token_file = None,
            (false, true) => admin_token = None,
            (false, false) if admin_token.is_some() && admin_token_file.is_some() => {
                return conflict(
                    "FOLDHOST_ADMIN_TOKEN and FOLDHOST_ADMIN_TOKEN_FILE are both set: unset \
                     one, or give --admin-token or --admin-token-file\n",
                );
            }
            (false, false) => {}
        }
        Ok(Self {
            admin_token,
            admin_token_file,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
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

/// `--admin-token` / `--admin-token-file` given before a subcommand that takes them itself
/// (`plugins --admin-token T load …`, as they were once taken): hidden, they override its own.
#[derive(Debug, Args)]
pub struct LeadingAdminToken {
    #[arg(
        long = "admin-token",
        id = "leading_admin_token",
        hide = true,
        conflicts_with = "leading_admin_token_file"
    )]
    admin_token: Option<String>,
    #[arg(
        long = "admin-token-file",
        id = "leading_admin_token_file",
        value_name = "FILE",
        hide = true
    )]
    admin_token_file: Option<PathBuf>,
}

impl LeadingAdminToken {
    /// Whether either option was given.
    pub fn is_given(&self) -> bool {
        self.admin_token.is_some() || self.admin_token_file.is_some()
    }

    /// `token` with the options given here in place of both of its own (a token given here
    /// wins over a token file given to the subcommand or in the environment), or `token` as
    /// it is when none was given here.
    pub fn over(self, token: AdminToken) -> AdminToken {
        if !self.is_given() {
            return token;
        }
        AdminToken {
            admin_token: self.admin_token,
            admin_token_file: self.admin_token_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_token_replaces_both_of_the_subcommands_options() {
        let own = || AdminToken {
            admin_token: None,
            admin_token_file: Some("/run/secrets/token".into()),
        };
        let leading = LeadingAdminToken {
            admin_token: Some("T".into()),
            admin_token_file: None,
        };
        let token = leading.over(own());
        assert_eq!(
            (token.admin_token.as_deref(), token.admin_token_file),
            (Some("T"), None)
        );
        let none = LeadingAdminToken {
            admin_token: None,
            admin_token_file: None,
        };
        let token = none.over(own());
        assert_eq!(token.admin_token_file, own().admin_token_file);
    }
}
