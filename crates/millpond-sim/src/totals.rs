//! Figures of a run, summed over seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What the simulator did and checked, per seed or summed over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Seeds run.
    pub seeds: u64,
    /// Calls into the engine's API (workload, checks and drains).
    pub operations: u64,
    /// Pushes (single or batch members) that returned `Ok` under `Sync`.
    pub pushes_ok: u64,
    /// Pushes that returned an error (fault, power cut or poisoned queue).
    pub pushes_failed: u64,
    /// Deliveries checked (payload, id, attempt, priority, delay, acks).
    pub deliveries: u64,
    /// Acks that returned `Ok`.
    pub acks_ok: u64,
    /// Faults that fired, by kind: `power cut`, `eio write`,
    /// `enospc sync`, ..., `bit flip segment`, `bit flip index`.
    pub faults: BTreeMap<String, u64>,
    /// Injected faults that never fired before a crash disarmed them.
    pub faults_unfired: u64,
    /// Power cuts followed by recovery (workload, recovery and final ones).
    pub crashes: u64,
    /// Power cuts that landed while the store was recovering.
    pub crashes_in_recovery: u64,
    /// Clean or failed closes followed by a reopen on the same disk.
    pub restarts: u64,
    /// Opens that failed on an injected fault and were retried.
    pub reopen_retries: u64,
    /// Torn tails recovery truncated.
    pub torn_tails: u64,
    /// Damaged ranges recovery reported (after bit flips).
    pub damaged_ranges: u64,
    /// Corruption errors the engine reported instead of data.
    pub corruption_reported: u64,
    /// Pushes probed right after a failed one, that got `Poisoned`.
    pub poison_checks: u64,
    /// Compaction passes that returned `Ok`.
    pub compactions: u64,
    /// Segments compaction deleted, rewrote, and dropped by retention.
    pub segments_deleted: u64,
    /// Segments compaction rewrote with only their live frames.
    pub segments_rewritten: u64,
    /// Segments retention dropped.
    pub segments_dropped: u64,
    /// Group journals compaction replaced by a checkpoint.
    pub journals_checkpointed: u64,
    /// Full drain checks (clock far ahead, buried kicked, all delivered).
    pub drains: u64,
    /// Acknowledged pushes read back after a reopen, byte for byte.
    pub reads_verified: u64,
    /// Acknowledged pushes found delivered (or dead-lettered) by a drain.
    pub drain_verified: u64,
    /// Situations that would show a known engine bug, stepped around
    /// (see `--show-known-bugs`), by bug.
    pub known_bugs: BTreeMap<String, u64>,
    /// Seeds that failed.
    pub failures: u64,
}

impl Totals {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Totals) {
        self.seeds += other.seeds;
        self.operations += other.operations;
        self.pushes_ok += other.pushes_ok;
        self.pushes_failed += other.pushes_failed;
        self.deliveries += other.deliveries;
        self.acks_ok += other.acks_ok;
        for (k, v) in &other.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        self.faults_unfired += other.faults_unfired;
        self.crashes += other.crashes;
        self.crashes_in_recovery += other.crashes_in_recovery;
        self.restarts += other.restarts;
        self.reopen_retries += other.reopen_retries;
        self.torn_tails += other.torn_tails;
        self.damaged_ranges += other.damaged_ranges;
        self.corruption_reported += other.corruption_reported;
        self.poison_checks += other.poison_checks;
        self.compactions += other.compactions;
        self.segments_deleted += other.segments_deleted;
        self.segments_rewritten += other.segments_rewritten;
        self.segments_dropped += other.segments_dropped;
        self.journals_checkpointed += other.journals_checkpointed;
        self.drains += other.drains;
        self.reads_verified += other.reads_verified;
        self.drain_verified += other.drain_verified;
        for (k, v) in &other.known_bugs {
            *self.known_bugs.entry(k.clone()).or_default() += v;
        }
        self.failures += other.failures;
    }

    /// Counts one situation of known bug `name` that was stepped around.
    pub fn known_bug(&mut self, name: &str) {
        *self.known_bugs.entry(name.to_owned()).or_default() += 1;
    }

    /// Counts one fault of `kind`.
    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
    }

    /// Faults fired, all kinds.
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Messages verified: deliveries checked, reads after reopen, and
    /// acknowledged pushes accounted for by drains.
    pub fn messages_verified(&self) -> u64 {
        self.deliveries + self.reads_verified + self.drain_verified
    }

    /// A human-readable summary, several lines.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  operations {} (pushes ok {}, failed {}; deliveries {}; acks ok {}; compactions {})",
            self.operations,
            self.pushes_ok,
            self.pushes_failed,
            self.deliveries,
            self.acks_ok,
            self.compactions
        );
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  faults fired {}: {}; armed but never fired {}",
            self.faults_total(),
            kinds.join(", "),
            self.faults_unfired
        );
        let _ = writeln!(
            s,
            "  crashes {} (power cuts during recovery {}), restarts {}, opens retried {}, torn tails {}, damaged ranges {}, corruption reported {}, poison checks {}",
            self.crashes,
            self.crashes_in_recovery,
            self.restarts,
            self.reopen_retries,
            self.torn_tails,
            self.damaged_ranges,
            self.corruption_reported,
            self.poison_checks
        );
        let _ = writeln!(
            s,
            "  segments deleted {}, rewritten {}, dropped by retention {}; journals checkpointed {}; drains {}",
            self.segments_deleted,
            self.segments_rewritten,
            self.segments_dropped,
            self.journals_checkpointed,
            self.drains
        );
        let _ = writeln!(
            s,
            "  messages verified {} (deliveries {}, reads after reopen {}, accounted for by drains {})",
            self.messages_verified(),
            self.deliveries,
            self.reads_verified,
            self.drain_verified
        );
        let bugs: Vec<String> = self
            .known_bugs
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !bugs.is_empty() {
            let _ = writeln!(s, "  known engine bugs stepped around: {}", bugs.join("; "));
        }
        let _ = write!(s, "  failures {}", self.failures);
        s
    }

    /// The figures as one JSON object (no dependencies: every value is a
    /// number or a plain key).
    pub fn json(&self) -> String {
        let map = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("\"{}\":{v}", k.replace('"', "'")))
                .collect::<Vec<_>>()
                .join(",")
        };
        let faults = map(&self.faults);
        let bugs = map(&self.known_bugs);
        format!(
            concat!(
                "{{\"seeds\":{},\"operations\":{},\"pushes_ok\":{},\"pushes_failed\":{},",
                "\"deliveries\":{},\"acks_ok\":{},\"faults\":{{{}}},\"faults_total\":{},",
                "\"faults_unfired\":{},\"crashes\":{},\"crashes_in_recovery\":{},",
                "\"restarts\":{},\"reopen_retries\":{},\"torn_tails\":{},\"damaged_ranges\":{},",
                "\"corruption_reported\":{},\"poison_checks\":{},\"compactions\":{},",
                "\"segments_deleted\":{},\"segments_rewritten\":{},\"segments_dropped\":{},",
                "\"journals_checkpointed\":{},",
                "\"drains\":{},\"reads_verified\":{},\"drain_verified\":{},",
                "\"messages_verified\":{},\"known_bugs_stepped_around\":{{{}}},\"failures\":{}}}"
            ),
            self.seeds,
            self.operations,
            self.pushes_ok,
            self.pushes_failed,
            self.deliveries,
            self.acks_ok,
            faults,
            self.faults_total(),
            self.faults_unfired,
            self.crashes,
            self.crashes_in_recovery,
            self.restarts,
            self.reopen_retries,
            self.torn_tails,
            self.damaged_ranges,
            self.corruption_reported,
            self.poison_checks,
            self.compactions,
            self.segments_deleted,
            self.segments_rewritten,
            self.segments_dropped,
            self.journals_checkpointed,
            self.drains,
            self.reads_verified,
            self.drain_verified,
            self.messages_verified(),
            bugs,
            self.failures
        )
    }
}
