//! Exit codes and error messages: a locked store, a missing store, unknown
//! names, bad arguments, and the help texts that document them.

mod common;

use common::{TestStore, run};
use millpond::{Options, Store};

#[test]
fn a_locked_store_is_reported_with_its_lock_file() {
    let s = TestStore::new();
    s.push_lines("q", &["x"]);
    let held = Store::open(s.path(), Options::default()).unwrap();
    let lock_file = s.path().join("LOCK");
    for args in [
        &["push", "y"][..],
        &["reserve", "-q", "q"],
        &["ack", "-q", "q", "1"],
        &["stats"],
        &["verify"],
        &["repair"],
        &["compact"],
    ] {
        let out = s.run(args).expect_code(3);
        assert!(
            out.stderr
                .starts_with("error: store is locked by another process"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(lock_file.to_str().unwrap()),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    // dump reads the files without the lock.
    let frames = s.json_lines(&["dump", "-q", "q"], 0);
    assert_eq!(frames.len(), 1);
    held.close().unwrap();
    s.ok(&["verify"]);
}

#[test]
fn missing_store_and_unknown_names_say_what_to_do() {
    let s = TestStore::new();
    let out = s.run(&["stats"]).expect_code(2);
    assert!(out.stderr.contains("no store at"), "{}", out.stderr);
    assert!(out.stderr.contains("--store"), "{}", out.stderr);
    assert!(!s.path().exists(), "a read command created the store");
    s.run(&["verify"]).expect_code(2);

    s.push_lines("jobs", &["x"]);
    let out = s.run(&["reserve", "-q", "job"]).expect_code(2);
    assert!(
        out.stderr.contains(r#"no queue "job""#) && out.stderr.contains("queues: jobs"),
        "{}",
        out.stderr
    );
    let out = s.run(&["dump", "-q", "job"]).expect_code(2);
    assert!(out.stderr.contains("`millpond queues`"), "{}", out.stderr);
    let out = s.run(&["push", "-q", "bad/name", "x"]).expect_code(2);
    assert!(out.stderr.contains("invalid name"), "{}", out.stderr);
}

#[test]
fn bad_arguments_exit_with_2() {
    let s = TestStore::new();
    s.push_lines("q", &["x"]);
    for args in [
        &["push"][..],
        &["push", "x", "--stdin"],
        &["reserve", "--lease", "0"],
        &["reserve", "--wait", "5"],
        &["peek"],
        &["kick", "3", "--id", "4"],
        &["push", "x", "--durability", "sometimes"],
        &["nope"],
    ] {
        s.run(args).expect_code(2);
    }
    let input = b"{\"payload\": \"a\"}\n{\"payload\": 3}\n";
    let out = s
        .run_with_stdin(&["push", "-q", "q", "--jsonl", "--batch", "1"], Some(input))
        .expect_code(2);
    assert!(out.stderr.contains("stdin line 2"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pushed 1 message (ids 2..=2) before it, nothing after"),
        "{}",
        out.stderr
    );
    let out = s
        .run_with_stdin(
            &["push", "-q", "q", "--jsonl"],
            Some(b"{\"payload_b64\": \"**\"}\n"),
        )
        .expect_code(2);
    assert!(
        out.stderr
            .contains("stdin line 1: the object payload_b64 is not standard base64"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was pushed"), "{}", out.stderr);
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let out = run(&["--help"], None).expect_code(0);
    for needle in [
        "Exit codes:",
        "3  the store is locked",
        "Examples:",
        "verify",
        "bench",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    for command in [
        "push", "reserve", "ack", "nack", "touch", "bury", "kick", "peek", "stats", "queues",
        "groups", "dump", "verify", "repair", "compact", "export", "import", "bench",
    ] {
        let out = run(&[command, "--help"], None).expect_code(0);
        assert!(
            out.stdout.contains("Examples:"),
            "{command}: {}",
            out.stdout
        );
    }
}
