//! The `millpond` command line: a thin layer over the `millpond` library.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap
//! derive) and a `run` function returning [`Outcome`]. To add one, add a
//! module, a variant to [`Command`] and a line to [`Command::run`].
//!
//! Exit codes are listed in [`failure`]: 0 success, 1 damaged data, 2 an
//! error, 3 a locked store, 4 no message.

mod args;
mod bench;
mod compact;
mod demo;
mod durability;
mod duration;
mod failure;
mod handoff;
mod inspect;
mod integrity;
mod loadgen;
mod open;
mod output;
mod progress;
mod serve;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::failure::{EXIT_CODES_HELP, EXIT_DAMAGED, EXIT_EMPTY, EXIT_SUCCESS, Error};

const ABOUT_LONG: &str = "\
millpond: a durable, disk-backed queue engine.

A store is one directory owned by one process; it holds named queues, each an
append-only log of messages with ids that only grow. Consumer groups read a
queue independently: each group sees every message, and its consumers share
them with leases, acks, retries and dead letters.";

const EXAMPLES: &str = "\
Examples:
  millpond push 'resize image 42'                 push one message to queue default
  seq 1000 | millpond push --stdin -q jobs        one message per line
  millpond reserve -q jobs --ack                  take one message and ack it
  millpond reserve -q jobs --json                 take one, reserved for --lease (30s)
  millpond ack -q jobs 17                         settle it from a later command
  millpond stats                                  every queue and group
  millpond verify && millpond export -q jobs --out jobs.mpx
  RUST_LOG=debug millpond stats                   with diagnostics on stderr";

/// millpond: a durable, disk-backed queue engine.
#[derive(Debug, Parser)]
#[command(
    name = "millpond",
    version,
    propagate_version = true,
    long_about = ABOUT_LONG,
    after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"),
)]
struct Cli {
    /// The store directory.
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
    /// Serve the store over TCP as a beanstalkd-protocol job broker.
    #[command(display_order = 0, after_help = serve::HELP)]
    Serve(serve::Args),
    /// Push messages: an argument, lines of stdin, or JSON Lines.
    #[command(display_order = 1, after_help = work::push::HELP)]
    Push(work::push::Args),
    /// Reserve messages for a consumer group and print them.
    #[command(display_order = 2, after_help = work::reserve::HELP)]
    Reserve(work::reserve::Args),
    /// Acknowledge reserved messages: they are done.
    #[command(display_order = 3, after_help = work::settle::HELP_ACK)]
    Ack(work::settle::AckArgs),
    /// Release reserved messages for a retry.
    #[command(display_order = 4, after_help = work::settle::HELP_NACK)]
    Nack(work::settle::NackArgs),
    /// Extend the lease of reserved messages.
    #[command(display_order = 5, after_help = work::settle::HELP_TOUCH)]
    Touch(work::settle::TouchArgs),
    /// Bury reserved messages (dead-letter them within the group).
    #[command(display_order = 6, after_help = work::settle::HELP_BURY)]
    Bury(work::settle::BuryArgs),
    /// Revive buried messages (or one buried or delayed message by id).
    #[command(display_order = 7, after_help = work::kick::HELP)]
    Kick(work::kick::Args),
    /// Show a message without reserving it.
    #[command(display_order = 8, after_help = work::peek::HELP)]
    Peek(work::peek::Args),
    /// Counts of every queue and group, as a table.
    #[command(display_order = 20, after_help = inspect::stats::HELP)]
    Stats(inspect::stats::Args),
    /// List the queues.
    #[command(display_order = 21, after_help = inspect::list::HELP_QUEUES)]
    Queues(inspect::list::QueuesArgs),
    /// List the consumer groups.
    #[command(display_order = 22, after_help = inspect::list::HELP_GROUPS)]
    Groups(inspect::list::GroupsArgs),
    /// Decode a queue's segment files frame by frame.
    #[command(display_order = 23, after_help = inspect::dump::HELP)]
    Dump(inspect::dump::Args),
    /// Check every file of the store; exit 1 with a report on damage.
    #[command(display_order = 30, after_help = integrity::verify::HELP)]
    Verify(integrity::verify::Args),
    /// Move damaged bytes aside into quarantine files and rewrite the files
    /// without them.
    #[command(display_order = 31, after_help = integrity::repair::HELP)]
    Repair(integrity::repair::Args),
    /// Reclaim the space of finished messages now.
    #[command(display_order = 40, after_help = compact::HELP)]
    Compact(compact::Args),
    /// Write a group's unfinished messages to a self-checking file.
    #[command(display_order = 50, after_help = handoff::export::HELP)]
    Export(handoff::export::Args),
    /// Check an export file whole, then push its messages.
    #[command(display_order = 51, after_help = handoff::import::HELP)]
    Import(handoff::import::Args),
    /// Measure throughput and latency with producer and consumer threads.
    #[command(display_order = 60, after_help = bench::HELP)]
    Bench(bench::Args),
    /// Push messages and read them back, verifying every byte.
    ///
    /// Producer threads push stamped payloads into the queue `demo` while a
    /// reader follows the log and checks ids, payload bytes and each
    /// producer's order; prints throughput, the durability mode and what
    /// recovery found when the store was opened. Each run appends.
    #[command(display_order = 70)]
    Demo(demo::Args),
}

impl Command {
    fn run(self, global: &Global) -> Result<Outcome, Error> {
        match self {
            Command::Push(args) => work::push::run(global, args),
            Command::Reserve(args) => work::reserve::run(global, args),
            Command::Ack(args) => work::settle::ack(global, args),
            Command::Nack(args) => work::settle::nack(global, args),
            Command::Touch(args) => work::settle::touch(global, args),
            Command::Bury(args) => work::settle::bury(global, args),
            Command::Kick(args) => work::kick::run(global, args),
            Command::Peek(args) => work::peek::run(global, args),
            Command::Stats(args) => inspect::stats::run(global, args),
            Command::Queues(args) => inspect::list::queues(global, args),
            Command::Groups(args) => inspect::list::groups(global, args),
            Command::Dump(args) => inspect::dump::run(global, args),
            Command::Verify(args) => integrity::verify::run(global, args),
            Command::Repair(args) => integrity::repair::run(global, args),
            Command::Compact(args) => compact::run(global, args),
            Command::Export(args) => handoff::export::run(global, args),
            Command::Import(args) => handoff::import::run(global, args),
            Command::Bench(args) => bench::run(global, args),
            Command::Demo(args) => demo::run(global, args),
            Command::Serve(args) => serve::run(global, args),
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
    /// A check found damage (details already printed): exit code 1.
    CheckFailed,
    /// There was no message to reserve or peek: exit code 4.
    Empty,
}

/// Logging to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Whether `e` is a write to a closed pipe (`millpond dump | head`).
fn is_broken_pipe(e: &Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let global = Global { store: cli.store };
    match cli.command.run(&global) {
        Ok(Outcome::Success) => ExitCode::from(EXIT_SUCCESS),
        Ok(Outcome::CheckFailed) => ExitCode::from(EXIT_DAMAGED),
        Ok(Outcome::Empty) => ExitCode::from(EXIT_EMPTY),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_SUCCESS),
        Err(e) => {
            let (code, message) = failure::classify(&e);
            eprintln!("error: {message}");
            ExitCode::from(code)
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

    #[test]
    fn queue_and_group_default() {
        let cli = Cli::try_parse_from(["millpond", "reserve"]).unwrap();
        let Command::Reserve(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(args.target.queue, "default");
        assert_eq!(args.target.group, "default");
    }
}
