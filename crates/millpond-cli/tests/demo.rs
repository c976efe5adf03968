//! `millpond demo` run as a real process: it verifies what it pushed, and a
//! store held by another owner is refused with the lock file named.

use std::process::{Command, Output};

use millpond::{Options, Store};

fn millpond(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(args)
        .output()
        .expect("run the millpond binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn demo_pushes_reads_and_verifies_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    let out = millpond(&["--store", store, "demo", "--count", "2000"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("pushed 2000 messages of 100 bytes from 4 producers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read and verified 2000 messages"),
        "{stdout}"
    );
    assert!(stdout.contains("durability sync"), "{stdout}");

    // A second run appends: its ids continue where the first run's ended,
    // and opening found the queue the first run left.
    let out = millpond(&[
        "--store",
        store,
        "demo",
        "--count",
        "300",
        "--producers",
        "3",
        "--batch",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let id_range = |stdout: &str| -> (u64, u64) {
        let range = stdout
            .split(": ids ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        let (start, end) = range.split_once("..=").unwrap();
        (start.parse().unwrap(), end.parse().unwrap())
    };
    let (start, end) = id_range(&stdout);
    assert_eq!(end - start + 1, 300, "{stdout}");
    assert!(start >= 2000, "second run's ids start at {start}: {stdout}");
    assert!(
        stdout.contains("recovery at open: 1 queue, 1 segment found"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read and verified 300 messages"),
        "{stdout}"
    );
}

#[test]
fn demo_refuses_a_locked_store_and_names_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path(), Options::default()).unwrap();
    let out = millpond(&[
        "--store",
        dir.path().to_str().unwrap(),
        "demo",
        "--count",
        "10",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    let lock_file = dir.path().join("LOCK");
    assert!(stderr.contains(lock_file.to_str().unwrap()), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    held.close().unwrap();
}

#[test]
fn bad_arguments_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    for args in [
        &["--store", store, "demo", "--durability", "sometimes"][..],
        &["--store", store, "demo", "--size", "19"],
        &["--store", store, "demo", "--producers", "0"],
    ] {
        let out = millpond(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
