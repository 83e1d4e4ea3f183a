//! Client subcommands for streams: listing them, deleting them, their retention metadata and
//! scavenging the journal.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{Remote, print_answer};
use super::token::AdminToken;

#[derive(Debug, Args)]
pub struct StreamsArgs {
    #[command(subcommand)]
    action: StreamsAction,
    #[command(flatten)]
    admin: AdminToken,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
enum StreamsAction {
    /// List streams, the most recently written first, with their version and last write.
    List {
        /// Only streams whose name starts with this (a category: `bank-account-`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most streams to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue a listing: the `next_after` it printed.
        #[arg(long, value_name = "POSITION")]
        after: Option<u64>,
    },
    /// Delete a stream: soft (reads find nothing until an append recreates it) or, with
    /// --hard and the admin token, for good. Its events go at the next scavenge.
    Delete {
        /// The stream to delete.
        stream: String,
        /// Never readable or writable again.
        #[arg(long)]
        hard: bool,
        /// Only delete if the stream is at this version: a number, `any` or `no_stream`.
        #[arg(long, default_value = "any")]
        expected_version: String,
    },
    /// Print a stream's retention metadata, or replace it when any option is given.
    Metadata {
        /// The stream whose metadata to print or set.
        stream: String,
        /// Hide events older than this many seconds.
        #[arg(long, value_name = "SECONDS")]
        max_age: Option<u64>,
        /// Keep only the newest N events.
        #[arg(long, value_name = "N")]
        max_count: Option<u64>,
        /// Hide the events below this version.
        #[arg(long, value_name = "VERSION")]
        truncate_before: Option<u64>,
        /// Remove every rule.
        #[arg(long, conflicts_with_all = ["max_age", "max_count", "truncate_before"])]
        clear: bool,
    },
}

#[derive(Debug, Args)]
pub struct ScavengeArgs {
    #[command(flatten)]
    admin: AdminToken,
    #[command(flatten)]
    remote: Remote,
}

pub async fn streams(args: StreamsArgs) -> anyhow::Result<()> {
    let request = match args.action {
        StreamsAction::List {
            prefix,
            limit,
            after,
        } => {
            let mut query = vec![("prefix", prefix), ("limit", limit.to_string())];
            query.extend(after.map(|after| ("after", after.to_string())));
            args.remote
                .request(Method::GET, &["streams"])?
                .query(&query)
        }
        StreamsAction::Delete {
            stream,
            hard,
            expected_version,
        } => {
            let request = args
                .remote
                .request(Method::DELETE, &["streams", &stream])?
                .query(&[
                    ("hard", hard.to_string()),
                    ("expected_version", expected_version),
                ]);
            args.admin.sign(request)?
        }
        StreamsAction::Metadata {
            stream,
            max_age,
            max_count,
            truncate_before,
            clear,
        } => {
            let segments = ["streams", &stream, "metadata"];
            let rules = [
                ("max_age", max_age),
                ("max_count", max_count),
                ("truncate_before", truncate_before),
            ];
            let metadata: Map<String, Value> = rules
                .into_iter()
                .filter_map(|(name, value)| Some((name.to_owned(), json!(value?))))
                .collect();
            if metadata.is_empty() && !clear {
                args.remote.request(Method::GET, &segments)?
            } else {
                args.remote.request(Method::PUT, &segments)?.json(&metadata)
            }
        }
    };
    print_answer(request).await
}

pub async fn scavenge(args: ScavengeArgs) -> anyhow::Result<()> {
    let request = args.remote.request(Method::POST, &["admin", "scavenge"])?;
    print_answer(args.admin.sign(request)?).await
}
