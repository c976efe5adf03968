//! A poison message that crashes its consumer every time is dead-lettered
//! after `max_attempts` deliveries, and the crash itself counts the attempt.
//!
//! The test pushes `poison` followed by 20 normal messages, then runs a
//! consumer child process (`tests/support/poison_child.rs`, group "default"
//! with `max_attempts: 3`) again and again on the same store. The child
//! reserves the poison message first and dies holding its lease: by
//! `std::process::abort()` in one test, by a SIGKILL from this process in
//! the other. Rounds 1–3 must each deliver the poison message with attempt
//! 1, 2, 3; round 4 must not see it at all (recovery buried it: the lost
//! lease of attempt 3 used up the attempts), must ack the 20 others in id
//! order and exit 0. A final reopen checks the group's figures and that the
//! buried message is the poison one with 3 attempts.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use millpond::{MessageState, Options, Store};
use millpond_suite::{FsKind, Place};

const MAX_ATTEMPTS: u32 = 3;
const NORMAL: usize = 20;
const ROUNDS_MAX: u32 = 10;
/// How long one child may run before the test gives up on it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

/// How the child dies holding the poison message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// The child calls `std::process::abort()` itself.
    Abort,
    /// The child sleeps; this process sends SIGKILL once it printed the
    /// `reserved` line.
    Kill,
}

/// Pushes `poison` and `ok-0`..`ok-19`; returns their ids.
fn push_jobs(path: &Path) -> (u64, Vec<u64>) {
    let store = Store::open(path, Options::default()).unwrap();
    let q = store.queue("jobs").unwrap();
    let poison = q.push(b"poison").unwrap();
    let ok: Vec<u64> = (0..NORMAL)
        .map(|i| q.push(format!("ok-{i}")).unwrap())
        .collect();
    drop(q);
    store.close().unwrap();
    (poison, ok)
}

/// Runs the child once; returns the lines it printed and how it ended.
fn run_child(path: &Path, death: Death) -> (Vec<String>, ExitStatus) {
    let mode = match death {
        Death::Abort => "abort",
        Death::Kill => "sleep",
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_millpond-poison-child"))
        .arg(path)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn millpond-poison-child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("child stdout")).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut lines = Vec::new();
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if death == Death::Kill && !killed && line.starts_with("reserved ") {
                    // The reservation was recorded before reserve returned:
                    // a kill -9 right now must still count the attempt.
                    child.kill().expect("kill child");
                    killed = true;
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not finish within {CHILD_TIMEOUT:?}; it printed {lines:?}");
            }
        }
    }
    let status = child.wait().expect("wait for child");
    reader.join().expect("stdout reader");
    (lines, status)
}

fn poison_is_dead_lettered_after_max_attempts(death: Death) {
    let place = Place::new(FsKind::Real);
    let (poison, ok) = push_jobs(&place.path);
    assert!(ok.iter().all(|&id| id > poison));
    let expected_signal = match death {
        Death::Abort => SIGABRT,
        Death::Kill => SIGKILL,
    };

    let mut finished = None;
    for round in 1..=ROUNDS_MAX {
        let (lines, status) = run_child(&place.path, death);
        if round <= MAX_ATTEMPTS {
            // The poison message is first in line: the child reserves it,
            // reports the attempt, and dies without acking anything.
            assert!(
                !status.success(),
                "round {round}: child must crash, got {status}; printed {lines:?}"
            );
            assert_eq!(
                status.signal(),
                Some(expected_signal),
                "round {round}: child ended by {status}, printed {lines:?}"
            );
            assert_eq!(
                lines,
                vec![format!("reserved {poison} attempt {round}")],
                "round {round}: the poison message must be delivered first, with attempt {round}"
            );
            continue;
        }
        // Attempts used up: the poison message must be dead-lettered.
        assert!(
            !lines.iter().any(|l| l.starts_with("reserved ")),
            "round {round}: the poison message was delivered again after {MAX_ATTEMPTS} \
             attempts instead of being buried; child printed {lines:?}, ended by {status}"
        );
        assert!(
            status.success(),
            "round {round}: child ended by {status}; printed {lines:?}"
        );
        let expected: Vec<String> = ok.iter().map(|id| format!("acked {id}")).collect();
        assert_eq!(
            lines, expected,
            "round {round}: the 20 normal messages, in id order"
        );
        finished = Some(round);
        break;
    }
    assert_eq!(
        finished,
        Some(MAX_ATTEMPTS + 1),
        "rounds until the child exits 0"
    );

    let store = Store::open(&place.path, Options::default()).unwrap();
    let q = store.queue("jobs").unwrap();
    let g = q.group("default").unwrap();
    let s = g.stats().unwrap();
    assert_eq!(s.buried, 1, "{s:?}");
    assert_eq!(s.dead_lettered_total, 1, "{s:?}");
    assert_eq!(s.acked_total, NORMAL as u64, "{s:?}");
    assert_eq!((s.reserved, s.ready, s.delayed), (0, 0, 0), "{s:?}");
    let buried = g.peek_buried().unwrap().expect("a buried message");
    assert_eq!(buried.id, poison);
    assert_eq!(buried.payload, b"poison");
    assert_eq!(buried.state, MessageState::Buried);
    assert_eq!(buried.attempts, MAX_ATTEMPTS);
    assert!(g.reserve(Duration::from_secs(30)).unwrap().is_none());
    drop((g, q));
    store.close().unwrap();
}

#[test]
fn poison_message_crashing_consumer_by_abort_is_buried_after_max_attempts() {
    poison_is_dead_lettered_after_max_attempts(Death::Abort);
}

#[test]
fn poison_message_consumer_killed_by_sigkill_is_buried_after_max_attempts() {
    poison_is_dead_lettered_after_max_attempts(Death::Kill);
}
