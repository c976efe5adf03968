//! Arguments shared by several subcommands.

use std::time::Duration;

use millpond::{DEFAULT_GROUP, Durability};

use crate::{durability, duration};

/// `--queue NAME`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArg {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME", default_value = "default")]
    pub queue: String,
}

/// `--queue NAME --group NAME`.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME", default_value = "default")]
    pub queue: String,

    /// The consumer group: each group sees every message; consumers of one
    /// group share them.
    #[arg(long, short = 'g', value_name = "NAME", default_value = DEFAULT_GROUP)]
    pub group: String,
}

/// `--json`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct JsonArg {
    /// Print JSON instead of text (see `--help` of each command for its
    /// shape).
    #[arg(long)]
    pub json: bool,
}

/// `--durability`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DurabilityArg {
    /// When a write counts as done: sync (fsynced before it is reported),
    /// interval:<duration> (fsynced at least that often) or buffered
    /// (fsynced when the command ends).
    #[arg(long, default_value = "sync", value_name = durability::VALUES,
          value_parser = durability::parse)]
    pub durability: Durability,
}

/// Parses a duration argument (`30s`, `500ms`, `5m`).
///
/// # Errors
///
/// See [`duration::parse`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

/// Parses a lease: longer than zero.
///
/// # Errors
///
/// A zero or malformed duration.
pub fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = duration::parse(text)?;
    if lease.is_zero() {
        return Err("a lease must be longer than zero".to_owned());
    }
    Ok(lease)
}
