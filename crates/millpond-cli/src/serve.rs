//! `millpond serve`: the store as a beanstalkd-protocol broker (see the
//! `millpond-server` crate).

use std::io::Write as _;
use std::time::Duration;

use millpond::{Durability, Options, Store};

use crate::failure::{Error, error};
use crate::{Global, Outcome, durability};

/// Extra help.
pub const HELP: &str = "\
Speaks beanstalkd's protocol (1.12): every command, its replies and errors.
Each tube is a queue of the store; `INSERTED` and `DELETED` are sent once the
job or its deletion is durable under `--durability sync`, with the puts and
deletes of all connections to a tube sharing one fsync.

Prints `listening on ADDR` (and `metrics on ADDR`) once ready. SIGTERM or
SIGINT: finish in-flight commands, close the store, exit 0. SIGUSR1: drain
(puts answer DRAINING).

Examples:
  millpond serve                                   127.0.0.1:11300, ./millpond-data
  millpond serve --addr 0.0.0.0:11300 --durability interval:50ms
  millpond serve --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:9300";

/// `millpond serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:11300")]
    pub addr: String,

    /// When a put or delete is answered: sync (after its fsync, shared by
    /// concurrent clients), interval:<duration> (fsynced at least that
    /// often) or buffered.
    #[arg(long, default_value = "sync", value_name = durability::VALUES,
          value_parser = durability::parse)]
    pub durability: Durability,

    /// Largest job body in bytes (beanstalkd's default).
    #[arg(long, value_name = "BYTES", default_value_t = 65535,
          value_parser = clap::value_parser!(u32).range(0..=(millpond::MESSAGE_BYTES_LIMIT as i64 - millpond_server::JOB_HEADER_BYTES as i64)))]
    pub max_job_size: u32,

    /// Most open connections; further ones are accepted and closed at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// How far ahead of its writes each tube's log (and each journal, at
    /// most 256 KiB) is extended with zeros under `--durability sync`, so
    /// an fsync commits no file size; 0 turns it off. A tube's file holds
    /// at least 64 KiB of zeros while it is open.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(0..=(1 << 30)))]
    pub preallocate_bytes: u64,

    /// Threads serving connections (default: one per CPU core).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
}

/// Runs the server until a signal stops it.
///
/// # Errors
///
/// The store cannot be opened; an address cannot be bound.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let options = Options::default()
        .durability(args.durability)
        // Each stored job carries the server's header before its body.
        .message_bytes_max(args.max_job_size + millpond_server::JOB_HEADER_BYTES as u32)
        .preallocate_bytes(args.preallocate_bytes)
        .compact_interval(Some(Duration::from_secs(5)));
    let store = Store::open(&global.store, options)?;
    let config = millpond_server::Config {
        addr: args.addr,
        max_job_bytes: args.max_job_size,
        max_connections: args.max_connections.max(1),
        metrics_addr: args.metrics_addr,
        threads: args.threads,
    };
    millpond_server::run(store, config, |addr, metrics| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        if let Some(m) = metrics {
            let _ = writeln!(out, "metrics on {m}");
        }
        let _ = out.flush();
    })
    .map_err(|e| error(format!("serve: {e}")))?;
    Ok(Outcome::Success)
}
