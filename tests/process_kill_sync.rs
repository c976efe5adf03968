//! Real process kills during concurrent `Sync` pushes (guarantees 1 and 4).
//!
//! Round after round on one store in a temporary directory, a child process
//! (`tests/support/kill_child.rs`) pushes from 1–4 threads and prints each
//! id once its push returned; it is killed with SIGKILL after a random
//! 20–300 ms. The test then reopens the store and checks that every printed
//! id holds exactly the payload pushed, that the log is ids `1..=n` with no
//! gap or duplicate, that every message in it is one a child pushed (a
//! prefix of each child thread's pushes), and that nothing from earlier
//! rounds changed.
//!
//! `MILLPOND_KILL_ROUNDS` overrides the number of rounds (default 20).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use millpond::{Options, Store};

#[path = "support/kill_payload.rs"]
mod kill_payload;

const ROUNDS_DEFAULT: u32 = 20;

/// SplitMix64, seeded from the round.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * u128::from(n)) >> 64) as u64
    }
}

/// The options the child uses too.
fn options() -> Options {
    Options::default()
        .segment_bytes_max(16 << 10)
        .index_interval_bytes(512)
}

/// (round, thread, seq) of a message.
type Origin = (u32, u32, u64);

/// Runs one child for `round`, kills it, and returns the ids it printed.
fn run_child(store: &Path, round: u32, threads: u32, kill_after: Duration) -> Vec<(u64, Origin)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_millpond-kill-child"))
        .arg("push")
        .arg(store)
        .arg(round.to_string())
        .arg(threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the kill child");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).expect("read child stdout");
        out
    });
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    let out = reader.join().expect("stdout reader");
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child should die of SIGKILL, not {status:?} (it exits only on an error)"
    );
    let text = String::from_utf8(out).expect("child prints UTF-8");
    // A line cut short by the kill is ignored; complete ones end in '\n'.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert!(
                f.len() == 5 && f[0] == "id",
                "round {round}: bad line {line:?}"
            );
            let id: u64 = f[1].parse().expect("id");
            let origin = (
                f[2].parse().expect("round"),
                f[3].parse().expect("thread"),
                f[4].parse().expect("seq"),
            );
            assert_eq!(origin.0, round, "line {line:?}");
            (id, origin)
        })
        .collect()
}

/// Reopens the store and checks the whole log; returns it as origins by id,
/// and whether recovery truncated a torn tail.
fn check_log(
    store_path: &Path,
    round: u32,
    printed: &BTreeMap<u64, Origin>,
    before: &[Origin],
) -> (Vec<Origin>, bool) {
    let store = Store::open(store_path, options())
        .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
    let mut torn = false;
    for qr in &store.recovery_report().queues {
        assert!(qr.damaged.is_empty(), "round {round}: damage {qr:?}");
        torn |= qr.torn_tail.is_some();
    }
    let q = store.queue("q").unwrap();
    let mut log: Vec<Origin> = Vec::new();
    let mut next_seq: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for m in q.reader(1) {
        let m = m.unwrap_or_else(|e| panic!("round {round}: reader error {e}"));
        assert_eq!(
            m.id,
            log.len() as u64 + 1,
            "round {round}: ids must be 1..=n with no gap or duplicate"
        );
        let origin = kill_payload::claimed(&m.payload)
            .unwrap_or_else(|| panic!("round {round}: id {} holds a payload never pushed", m.id));
        assert!(
            origin.0 <= round,
            "round {round}: id {} claims {origin:?}",
            m.id
        );
        assert_eq!(
            m.payload,
            kill_payload::message(origin.0, origin.1, origin.2),
            "round {round}: id {} claims {origin:?} but its bytes differ",
            m.id
        );
        let expected_seq = next_seq.entry((origin.0, origin.1)).or_insert(0);
        assert_eq!(
            origin.2, *expected_seq,
            "round {round}: id {}: each child thread's messages are a prefix of its pushes",
            m.id
        );
        *expected_seq += 1;
        log.push(origin);
    }
    assert!(
        log.len() >= before.len() && log[..before.len()] == *before,
        "round {round}: messages of earlier rounds changed or vanished ({} before, {} now)",
        before.len(),
        log.len()
    );
    for (&id, &origin) in printed {
        assert!(
            id >= 1 && id <= log.len() as u64,
            "round {round}: printed id {id} ({origin:?}) is not in the log of {} messages",
            log.len()
        );
        assert_eq!(
            log[id as usize - 1],
            origin,
            "round {round}: printed id {id} holds another message"
        );
    }
    // Spot checks by id, through the sparse index rather than the reader.
    for (&id, &(r, t, s)) in printed.iter().rev().take(50) {
        let m = q.read(id).unwrap().expect("printed id present");
        assert_eq!(m.payload, kill_payload::message(r, t, s), "read({id})");
    }
    assert_eq!(q.next_id(), log.len() as u64 + 1, "round {round}: next_id");
    drop(q);
    store.close().unwrap();
    (log, torn)
}

#[test]
fn printed_pushes_survive_sigkill() {
    let rounds: u32 = std::env::var("MILLPOND_KILL_ROUNDS")
        .map(|r| r.trim().parse().expect("MILLPOND_KILL_ROUNDS is a number"))
        .unwrap_or(ROUNDS_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let started = Instant::now();
    let mut printed: BTreeMap<u64, Origin> = BTreeMap::new();
    let mut log: Vec<Origin> = Vec::new();
    let mut torn_tails = 0;
    for round in 0..rounds {
        let seed = 0x6B69_6C6C_0000 + u64::from(round);
        let mut rng = Rng(seed);
        let threads = 1 + rng.below(4) as u32;
        let kill_after = Duration::from_millis(20 + rng.below(281));
        println!("round {round}: seed {seed:#x}, {threads} threads, SIGKILL after {kill_after:?}");
        let lines = run_child(&store_path, round, threads, kill_after);
        let new = lines.len();
        for (id, origin) in lines {
            if let Some(old) = printed.insert(id, origin) {
                panic!("round {round}: id {id} printed twice: {old:?} and {origin:?}");
            }
        }
        let torn;
        (log, torn) = check_log(&store_path, round, &printed, &log);
        torn_tails += u32::from(torn);
        let store = Store::open(&store_path, options()).unwrap();
        let report = store.recovery_report();
        assert!(report.is_clean(), "round {round}: after close: {report:?}");
        assert_eq!(report.segments_scanned(), 0, "round {round}");
        drop(store);
        println!(
            "round {round}: {new} ids printed, log now {} messages",
            log.len()
        );
    }
    println!(
        "{rounds} rounds in {:.1?}: {} printed ids verified, {} messages in the log, {torn_tails} torn tails truncated",
        started.elapsed(),
        printed.len(),
        log.len()
    );
    assert!(!printed.is_empty(), "the children pushed nothing");
}
