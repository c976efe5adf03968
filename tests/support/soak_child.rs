//! The crash soak's worker and long-soak driver (see `soak.rs`).
//!
//! ```text
//! millpond-soak-child worker <store> <round> <producers> <consumers>
//!     Opens the store (real file system, `Sync`), prints `opened`, then
//!     runs until killed: producers push to queue "q" and print
//!     `push <id> <round> <thread> <seq>` once a push returned; consumers
//!     reserve from group "default", print `got <id> <attempt> <round>
//!     <thread> <seq>`, then nack one in eight (`nack <id>` once it
//!     returned) and ack the rest (`acking <id>` before, `ack <id>` once
//!     it returned). Every line is flushed as it is written.
//! millpond-soak-child soak [--rounds N] [--seed S] [--dir DIR] [--quiet]
//!     Runs the soak's driver: N rounds (default 1000) of worker, SIGKILL,
//!     reopen and check; prints the totals, exits 1 on the first broken
//!     guarantee. DIR (default: a temporary directory) must not hold a
//!     store yet.
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use millpond::Store;

mod kill_payload;
mod soak;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") if args.len() == 6 => {
            let parse = |i: usize| -> u32 { args[i].parse().expect("a number") };
            worker(&args[2], parse(3), parse(4), parse(5))
        }
        Some("soak") => soak_main(&args[2..]),
        _ => {
            eprintln!(
                "usage: millpond-soak-child worker <store> <round> <producers> <consumers>\n       millpond-soak-child soak [--rounds N] [--seed S] [--dir DIR] [--quiet]"
            );
            ExitCode::from(2)
        }
    }
}

fn soak_main(args: &[String]) -> ExitCode {
    let (mut rounds, mut seed, mut dir, mut quiet) = (1000u32, 0x736f_616bu64, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--seed" => seed = value().parse().expect("--seed S"),
            "--dir" => dir = Some(PathBuf::from(value())),
            "--quiet" => quiet = true,
            other => {
                eprintln!("soak: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = dir.unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir).expect("create --dir");
    let exe = std::env::current_exe().expect("own path");
    println!(
        "crash soak: {rounds} rounds, seed {seed}, store in {}",
        dir.display()
    );
    match soak::run(&exe, &dir, rounds, seed, !quiet) {
        Ok(t) => {
            println!("crash soak passed: {}", t.line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("crash soak FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes `line` to stdout and flushes it, or exits (the driver is gone).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(3);
    }
}

fn die(what: &str, e: &millpond::Error) -> ! {
    eprintln!("soak worker: {what}: {e}");
    std::process::exit(1);
}

fn worker(path: &str, round: u32, producers: u32, consumers: u32) -> ExitCode {
    let store = Store::open(path, soak::options()).unwrap_or_else(|e| die("open", &e));
    let q = Arc::new(store.queue("q").unwrap_or_else(|e| die("queue", &e)));
    let g = Arc::new(q.group("default").unwrap_or_else(|e| die("group", &e)));
    say("opened\n");
    let mut handles = Vec::new();
    for thread in 0..producers {
        let q = q.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = soak::Rng(u64::from(round) << 8 | u64::from(thread));
            let mut seq = 0u64;
            loop {
                let n = if rng.below(4) == 0 {
                    2 + rng.below(3)
                } else {
                    1
                };
                let batch: Vec<Vec<u8>> = (seq..seq + n)
                    .map(|s| kill_payload::message(round, thread, s))
                    .collect();
                let first = if n == 1 {
                    q.push(&batch[0])
                } else {
                    q.push_batch(&batch).map(|ids| ids.start)
                }
                .unwrap_or_else(|e| die("push", &e));
                let mut lines = String::new();
                for i in 0..n {
                    lines += &format!("push {} {round} {thread} {}\n", first + i, seq + i);
                }
                say(&lines);
                seq += n;
            }
        }));
    }
    for thread in 0..consumers {
        let g = g.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = soak::Rng(0x636f_6e73 ^ (u64::from(round) << 8) ^ u64::from(thread));
            let lease = Duration::from_secs(60);
            loop {
                let batch = if rng.below(4) == 0 {
                    g.reserve_batch(1 + rng.below(4) as usize, lease)
                } else {
                    g.reserve_timeout(lease, Duration::from_millis(20))
                        .map(|d| d.into_iter().collect())
                }
                .unwrap_or_else(|e| die("reserve", &e));
                let mut lines = String::new();
                for d in &batch {
                    let Some((r, t, s)) = kill_payload::claimed(&d.payload) else {
                        eprintln!("soak worker: id {} holds a payload never pushed", d.id);
                        std::process::exit(1);
                    };
                    lines += &format!("got {} {} {r} {t} {s}\n", d.id, d.attempt);
                }
                say(&lines);
                let mut acks = Vec::new();
                for d in &batch {
                    if rng.below(8) == 0 {
                        g.nack(d.id, None).unwrap_or_else(|e| die("nack", &e));
                        say(&format!("nack {}\n", d.id));
                    } else {
                        acks.push(d.id);
                    }
                }
                if acks.is_empty() {
                    continue;
                }
                let ids = |word: &str| -> String {
                    acks.iter().map(|id| format!("{word} {id}\n")).collect()
                };
                say(&ids("acking"));
                if acks.len() == 1 {
                    g.ack(acks[0])
                } else {
                    g.ack_batch(&acks)
                }
                .unwrap_or_else(|e| die("ack", &e));
                say(&ids("ack"));
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}
