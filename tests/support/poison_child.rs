//! A child process for `tests/group_poison_message.rs`: a consumer that
//! crashes on a poison message.
//!
//! ```text
//! millpond-poison-child <store> [abort|sleep]
//! ```
//!
//! Opens the store (real file system, default `Sync` durability), queue
//! "jobs", group "default" with `max_attempts: 3`, and loops on
//! `reserve_timeout` (lease 30 s, wait 200 ms):
//!
//! - payload `b"poison"`: prints `reserved <id> attempt <n>` (flushed), then
//!   with `abort` (the default) calls `std::process::abort()`: a crash while
//!   processing, no cleanup, no unwinding; with `sleep` sleeps until the
//!   parent kills it with SIGKILL;
//! - any other payload: acks it and prints `acked <id>` (flushed).
//!
//! When nothing is left it closes the store and exits 0. Errors print to
//! stderr and exit 1.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use millpond::{GroupOptions, Options, Store};

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_millis(200);

/// What the child does once it holds the poison message.
#[derive(Clone, Copy)]
enum OnPoison {
    Abort,
    Sleep,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let on_poison = match args.get(2).map(String::as_str) {
        None | Some("abort") => Some(OnPoison::Abort),
        Some("sleep") => Some(OnPoison::Sleep),
        Some(_) => None,
    };
    let (Some(path), Some(on_poison), true) = (args.get(1), on_poison, args.len() <= 3) else {
        eprintln!("usage: millpond-poison-child <store> [abort|sleep]");
        return ExitCode::from(2);
    };
    match run(path, on_poison) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poison child: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &str, on_poison: OnPoison) -> millpond::Result<()> {
    let store = Store::open(path, Options::default())?;
    let q = store.queue("jobs")?;
    let g = q.group_with(
        "default",
        GroupOptions {
            max_attempts: 3,
            ..GroupOptions::default()
        },
    )?;
    while let Some(d) = g.reserve_timeout(LEASE, WAIT)? {
        if d.payload == b"poison" {
            say(&format!("reserved {} attempt {}", d.id, d.attempt));
            match on_poison {
                OnPoison::Abort => std::process::abort(),
                OnPoison::Sleep => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
        }
        g.ack(d.id)?;
        say(&format!("acked {}", d.id));
    }
    drop((g, q));
    store.close()
}
