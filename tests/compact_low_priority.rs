//! The background compactor thread runs at the lowest CPU priority (nice
//! 19), so that its copying waits for pushes and reserves; the threads of
//! the application keep theirs. Linux only (the nice value is read from
//! `/proc/self/task/<tid>/stat`).
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use millpond::{Options, Store};

/// Nice value (field 19 of `stat`) of the thread whose name starts with
/// `name` (`comm` is cut at 15 bytes), if there is one.
fn nice_of_thread(name: &str) -> Option<i64> {
    for entry in std::fs::read_dir("/proc/self/task").expect("list threads") {
        let dir = entry.expect("thread entry").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !name.starts_with(comm.trim_end()) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("read stat");
        // The name (field 2) is in parentheses and may hold spaces: count
        // fields after the last ')'. Field 3 is the first after it.
        let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        return Some(fields[19 - 3].parse().expect("nice is a number"));
    }
    None
}

fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read stat");
    let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    rest.split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn background_compactor_thread_runs_at_nice_19_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = own_nice();
    let store = Store::open(
        dir.path().join("store"),
        Options::default().compact_interval(Some(Duration::from_millis(10))),
    )
    .expect("open");
    let q = store.queue("q").expect("queue");
    q.push(b"x").expect("push");

    let deadline = Instant::now() + Duration::from_secs(20);
    let nice = loop {
        match nice_of_thread("millpond-compactor") {
            Some(19) => break 19,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "compactor thread nice value: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert_eq!(nice, 19);
    // Only that thread: the caller keeps its own priority, and so do the
    // threads it starts afterwards.
    assert_eq!(own_nice(), before);
    let spawned = std::thread::spawn(own_nice).join().expect("thread");
    assert_eq!(spawned, before);
    store.close().expect("close");
}
