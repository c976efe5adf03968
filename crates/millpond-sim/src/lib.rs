//! A seeded whole-engine fault simulator for millpond.
//!
//! Each seed builds, from nothing but the seed, a store on a
//! [`SimFs`](millpond::fs::SimFs) with a [`ManualClock`](millpond::ManualClock)
//! and small segments (so segments roll, seal and get compacted): 2–3
//! queues with 1–3 consumer groups each (varied `max_attempts`, backoff,
//! checkpoint size, sometimes a dead-letter queue). It runs a mixed,
//! single-threaded workload (push with priority and delay, push_batch,
//! reserve, reserve_batch, ack, ack_batch, nack, touch, bury, kick,
//! kick_id, compaction, clock jumps, retention) and draws faults from the
//! seed: power cuts (harsh or clean crash images, sometimes again during
//! recovery), `EIO` and `ENOSPC` on writes, fsyncs, directory fsyncs,
//! creates, renames, removes and truncations, and bit flips in segment and
//! index files. After every fault the store is reopened and checked
//! against a deliberately simple oracle:
//!
//! - every push that returned `Ok` under `Sync` is still there, byte for
//!   byte, under its id, and is delivered to every group that had not
//!   acked it (checked by drains: clock far ahead, buried messages
//!   kicked) unless a bit flip damaged it, retention dropped it, or it was
//!   moved to the dead-letter queue;
//! - a message whose ack returned `Ok` is never delivered to that group
//!   again, also after power cuts;
//! - every delivered payload is exactly what was pushed (so damaged bytes
//!   are never handed out); corruption errors name only files whose bits
//!   were flipped, and recovery reports damage only there;
//! - after a push fails on a write or fsync, the queue refuses pushes with
//!   `Error::Poisoned` until reopened; I/O errors appear only when a fault
//!   fired or the power is out;
//! - a delivery's attempt number is above the deliveries already recorded
//!   (durably, across power cuts), priorities and delays are kept;
//! - after everything is acked, compaction leaves one segment per queue.
//!
//! Everything is single-threaded and uses ordered collections only, so a
//! seed reproduces exactly: `cargo run --release -p millpond-sim -- --seed N`
//! (add `--trace` to print every operation and the segment files after
//! every crash).
//!
//! Engine bugs the simulator found and that are not fixed yet are listed in
//! [`KNOWN_BUGS`] (none at present: the last, a torn page mistaken for
//! damage, was fixed in session 10). By default the situations that show
//! them are stepped around (the way a fixed engine would behave) and
//! counted in
//! [`Totals::known_bugs`], so the run checks everything else;
//! `--show-known-bugs [NAMES]` (or `MILLPOND_SIM_SHOW_KNOWN_BUGS` in the
//! test) lets them fail their seeds. Once a bug is fixed, drop its entry
//! and its step-around.

mod payload;
mod rng;
mod sim;
mod totals;

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use payload::{crc32, decode as decode_payload, payload};
pub use rng::Rng;
pub use totals::Totals;

/// What one seed did, and how it failed, if it did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Its figures (`failures` is 1 if it failed).
    pub totals: Totals,
    /// The failure: what broke, where, and the last operations.
    pub failure: Option<String>,
}

/// How seeds run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print every operation to stderr.
    pub trace: bool,
    /// Known engine bugs not to step around (bit `i` is `KNOWN_BUGS[i]`):
    /// let them fail their seeds. See [`known_bugs_mask`].
    pub show_known_bugs: u32,
}

impl RunOptions {
    /// Whether known bug `name` is shown rather than stepped around.
    pub fn shows(&self, name: &str) -> bool {
        KNOWN_BUGS
            .iter()
            .position(|(n, _)| *n == name)
            .is_some_and(|i| self.show_known_bugs & (1 << i) != 0)
    }
}

/// The mask for [`RunOptions::show_known_bugs`] from `all` or a
/// comma-separated list of names from [`KNOWN_BUGS`].
///
/// # Errors
///
/// An unknown name.
pub fn known_bugs_mask(spec: &str) -> Result<u32, String> {
    let mut mask = 0;
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            mask |= (1 << KNOWN_BUGS.len()) - 1;
            continue;
        }
        match KNOWN_BUGS.iter().position(|(n, _)| *n == name) {
            Some(i) => mask |= 1 << i,
            None => {
                let names: Vec<&str> = KNOWN_BUGS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown bug {name:?}: one of all, {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(mask)
}

/// Engine bugs this simulator found that are not fixed yet. By default the
/// simulator steps around the situations that show them (and counts them
/// in [`Totals::known_bugs`]); [`RunOptions::show_known_bugs`] shows them.
pub const KNOWN_BUGS: &[(&str, &str)] = &[];

/// Runs one seed.
pub fn run_seed(seed: u64, options: RunOptions) -> SeedReport {
    let mut totals = Totals {
        seeds: 1,
        failures: 1,
        ..Totals::default()
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = sim::Sim::new(seed, options);
        let r = sim.run();
        let context = r.is_err().then(|| sim.context());
        (sim.totals.clone(), r, context)
    }));
    let failure = match outcome {
        Ok((t, Ok(()), _)) => {
            totals = t;
            None
        }
        Ok((t, Err(e), context)) => {
            totals = t;
            totals.failures = 1;
            Some(format!("{e}\n{}", context.unwrap_or_default()))
        }
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "(no message)".into());
            Some(format!("panicked: {text}"))
        }
    };
    SeedReport {
        seed,
        totals,
        failure,
    }
}

/// The one-line command that replays `seed`.
pub fn replay_command(seed: u64, options: RunOptions) -> String {
    let shown: Vec<&str> = KNOWN_BUGS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| options.shows(n))
        .collect();
    let mut cmd = format!("cargo run --release -p millpond-sim -- --seed {seed}");
    if !shown.is_empty() {
        cmd += &format!(" --show-known-bugs {}", shown.join(","));
    }
    cmd
}

/// Runs `seeds` on `jobs` threads (each seed alone is single-threaded and
/// deterministic), calling `on_report` for each seed in seed order; the
/// run stops early (after the seeds already running) when `on_report`
/// returns `false`.
pub fn run_seeds(
    seeds: Range<u64>,
    jobs: usize,
    options: RunOptions,
    mut on_report: impl FnMut(&SeedReport) -> bool,
) -> Totals {
    let mut total = Totals::default();
    if jobs <= 1 {
        for seed in seeds {
            let r = run_seed(seed, options);
            total.add(&r.totals);
            if !on_report(&r) {
                break;
            }
        }
        return total;
    }
    // Workers take seeds in order; reports are handed out in seed order.
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<SeedReport>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            let end = seeds.end;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tx.send(run_seed(seed, options)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = seeds.start;
        for r in rx {
            pending.insert(r.seed, r);
            while let Some(r) = pending.remove(&want) {
                want += 1;
                if stop.load(Ordering::Relaxed) {
                    continue;
                }
                total.add(&r.totals);
                if !on_report(&r) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        for seed in [3, 17] {
            let a = run_seed(seed, RunOptions::default());
            let b = run_seed(seed, RunOptions::default());
            assert_eq!(a.totals, b.totals, "seed {seed}");
            assert_eq!(a.failure, b.failure, "seed {seed}");
        }
    }
}
