//! A child process for `tests/process_kill_sync.rs` and `tests/faults.rs`.
//!
//! ```text
//! millpond-kill-child push <store> <round> <threads>
//!     Opens the store (real file system, `Sync`), runs <threads> pushers on
//!     queue "q" until killed; after each push returns prints one line
//!     `id <id> <round> <thread> <seq>` per message, flushed.
//! millpond-kill-child open-once <store>
//!     Tries to open the store once; prints `opened`, `locked <lock path>` or
//!     `error <error>`.
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use millpond::{Error, Options, Store};

mod kill_payload;

/// Segment size the child and the test both use, so rolls happen.
const SEGMENT_BYTES: u64 = 16 << 10;
/// Pushes one thread makes at most before it stops on its own.
const PUSHES_MAX: u64 = 1_000_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("push") if args.len() == 5 => {
            let round: u32 = args[3].parse().expect("round");
            let threads: u32 = args[4].parse().expect("threads");
            push(&args[2], round, threads)
        }
        Some("open-once") if args.len() == 3 => open_once(&args[2]),
        _ => {
            eprintln!(
                "usage: millpond-kill-child push <store> <round> <threads> | open-once <store>"
            );
            ExitCode::from(2)
        }
    }
}

fn options() -> Options {
    Options::default()
        .segment_bytes_max(SEGMENT_BYTES)
        .index_interval_bytes(512)
}

fn push(path: &str, round: u32, threads: u32) -> ExitCode {
    let store = match Store::open(path, options()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kill child: open {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let q = Arc::new(store.queue("q").expect("queue q"));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                let mut x = u64::from(round) << 8 | u64::from(thread);
                while seq < PUSHES_MAX {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let n = 1 + (x >> 61); // 1..=8, mostly single pushes below
                    let n = if n > 4 { 1 } else { n };
                    let batch: Vec<Vec<u8>> = (seq..seq + n)
                        .map(|s| kill_payload::message(round, thread, s))
                        .collect();
                    let first = if n == 1 {
                        q.push(&batch[0])
                    } else {
                        q.push_batch(&batch).map(|ids| ids.start)
                    };
                    let first = match first {
                        Ok(id) => id,
                        Err(e) => {
                            eprintln!("kill child: thread {thread} push: {e}");
                            std::process::exit(1);
                        }
                    };
                    let mut lines = String::new();
                    for i in 0..n {
                        lines.push_str(&format!("id {} {round} {thread} {}\n", first + i, seq + i));
                    }
                    let mut out = std::io::stdout().lock();
                    out.write_all(lines.as_bytes()).expect("stdout");
                    out.flush().expect("stdout");
                    seq += n;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("pusher thread");
    }
    ExitCode::SUCCESS
}

fn open_once(path: &str) -> ExitCode {
    match Store::open(path, options()) {
        Ok(store) => {
            println!("opened");
            drop(store);
            ExitCode::SUCCESS
        }
        Err(Error::Locked { path }) => {
            println!("locked {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::from(1)
        }
    }
}
