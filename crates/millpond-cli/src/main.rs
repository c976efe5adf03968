//! The `millpond` command line: a thin layer over the `millpond` library.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap
//! derive) and a `run` function returning [`Outcome`]. To add one, add a
//! module, a variant to [`Command`] and a line to [`Command::run`].
//!
//! Exit codes: 0 on success, 1 when a check failed (for example `demo`
//! read back bytes that differ from what it pushed), 2 on an error (bad
//! arguments, I/O, a locked store), printed as `error: ...` on stderr.

mod demo;
mod durability;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// millpond: a durable, disk-backed queue engine.
#[derive(Debug, Parser)]
#[command(name = "millpond", version, propagate_version = true)]
struct Cli {
    /// The store directory (created if missing).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./millpond-data"
    )]
    store: PathBuf,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Push messages and read them back, verifying every byte.
    ///
    /// Producer threads push stamped payloads into the queue `demo` while a
    /// reader follows the log and checks ids, payload bytes and each
    /// producer's order; prints throughput, the durability mode and what
    /// recovery found when the store was opened. Each run appends.
    Demo(demo::Args),
}

impl Command {
    fn run(self, global: &Global) -> Result<Outcome, Error> {
        match self {
            Command::Demo(args) => demo::run(global, args),
        }
    }
}

/// Options every subcommand sees.
#[derive(Debug)]
struct Global {
    /// The store directory.
    store: PathBuf,
}

/// How a command that ran to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Everything checked out: exit code 0.
    Success,
    /// A check failed (details already printed): exit code 1.
    CheckFailed,
}

/// An error that stops a command: exit code 2.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = Global { store: cli.store };
    match cli.command.run(&global) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn store_defaults_and_is_global() {
        let cli = Cli::try_parse_from(["millpond", "demo"]).unwrap();
        assert_eq!(cli.store, PathBuf::from("./millpond-data"));
        let cli = Cli::try_parse_from(["millpond", "demo", "--store", "/tmp/x"]).unwrap();
        assert_eq!(cli.store, PathBuf::from("/tmp/x"));
    }
}
