//! The work commands run as real processes: push (argument, stdin lines,
//! JSON Lines), reserve (raw, JSON, --ack, --count, --wait), and settling
//! messages reserved by an earlier process (their leases survive its clean
//! close): ack, nack, touch, bury, kick, peek.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestStore;
use serde_json::Value;

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Sleeps until `until_ms` (unix ms) has passed, plus a margin.
fn sleep_past(until_ms: u64) {
    let left = until_ms.saturating_sub(now_ms()) + 200;
    std::thread::sleep(Duration::from_millis(left));
}

/// Exits with 2 and says on stderr that `needles` apply.
#[track_caller]
fn refused(s: &TestStore, args: &[&str], needles: &[&str]) {
    let out = s.run(args).expect_code(2);
    assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "{args:?}: {needle:?} not in {}",
            out.stderr
        );
    }
}

/// (state, attempts) of message `id` of queue `jobs`.
fn state(s: &TestStore, id: u64) -> (String, u64) {
    let p = &s.json_lines(&["peek", "-q", "jobs", &id.to_string()], 0)[0];
    (
        p["state"].as_str().unwrap().to_owned(),
        p["attempts"].as_u64().unwrap(),
    )
}

#[test]
fn push_then_reserve_with_ack_in_priority_order() {
    let s = TestStore::new();
    assert_eq!(s.ok(&["push", "hello"]), "1\n");
    assert_eq!(s.push_lines("default", &["a", "b", "c"]), vec![2, 3, 4]);
    let jsonl = concat!(
        r#"{"payload": "p", "priority": 5}"#,
        "\n\n",
        r#"{"payload_b64": "/wA="}"#,
        "\n",
        r#"{"payload": "later", "delay_ms": 3600000}"#,
        "\n"
    );
    let out = s
        .run_with_stdin(&["push", "--jsonl", "--json"], Some(jsonl.as_bytes()))
        .expect_code(0);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["pushed"], 3);
    assert_eq!(
        (summary["first_id"].as_u64(), summary["last_id"].as_u64()),
        (Some(5), Some(7))
    );

    // Ready order is (priority, id); the delayed message is not ready.
    let got = s.json_lines(&["reserve", "--count", "10", "--ack"], 0);
    assert_eq!(ids(&got), vec![1, 2, 3, 4, 6, 5]);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[3]["payload"], "c");
    assert_eq!(got[4]["payload_b64"], "/wA=");
    assert!(got[4].get("payload").is_none());
    assert_eq!(got[5]["payload"], "p");
    assert_eq!(got[5]["priority"], 5);
    assert!(
        got.iter()
            .all(|m| m["attempt"] == 1 && m.get("held_until_ms").is_none())
    );

    let empty = s.run(&["reserve"]).expect_code(4);
    assert!(empty.stdout.is_empty(), "{}", empty.stdout);
    assert!(
        empty.stderr.contains("no message ready"),
        "{}",
        empty.stderr
    );

    let stats = s.json(&["stats"]);
    let group = &stats["queues"][0]["groups"][0];
    assert_eq!(
        (group["ready"].as_u64(), group["delayed"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(group["acked_total"], 6);
    let peeked = s.json_lines(&["peek", "7"], 0);
    assert_eq!(peeked[0]["state"], "delayed");
    assert_eq!(peeked[0]["payload"], "later");
    assert!(peeked[0]["remaining_ms"].as_u64().unwrap() > 3_500_000);
}

#[test]
fn raw_reserve_prints_payloads_and_wait_waits() {
    let s = TestStore::new();
    s.push_lines("q", &["first line", "second"]);
    let out = s
        .run(&["reserve", "-q", "q", "-n", "2", "--ack"])
        .expect_code(0);
    assert_eq!(out.stdout, "first line\nsecond\n");
    let started = Instant::now();
    s.run(&["reserve", "-q", "q", "--wait", "300ms"])
        .expect_code(4);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Without --ack, stderr says how to settle.
    s.push_lines("q", &["third"]);
    let out = s.run(&["reserve", "-q", "q"]).expect_code(0);
    assert_eq!(out.stdout, "third\n");
    assert!(
        out.stderr.contains("millpond ack -q q -g default 3"),
        "{}",
        out.stderr
    );
}

#[test]
fn reserved_messages_are_settled_by_later_processes() {
    let s = TestStore::new();
    s.push_lines("jobs", &["one", "two", "three", "four"]);
    let before = now_ms();
    let taken = s.json_lines(&["reserve", "-q", "jobs", "-n", "4", "--lease", "60s"], 0);
    assert_eq!(ids(&taken), vec![1, 2, 3, 4]);
    for m in &taken {
        let until = m["held_until_ms"].as_u64().unwrap();
        assert!((before + 60_000..now_ms() + 60_000).contains(&until), "{m}");
    }
    // Still reserved in the next process: nobody else gets them, and peek
    // shows the lease.
    s.run(&["reserve", "-q", "jobs"]).expect_code(4);
    assert_eq!(state(&s, 1), ("reserved".to_owned(), 1));
    let stats = s.json(&["stats", "-q", "jobs"]);
    assert_eq!(stats["queues"][0]["groups"][0]["reserved"], 4);

    assert_eq!(s.ok(&["ack", "-q", "jobs", "1"]), "acked 1\n");
    let nacked = s.json(&["nack", "-q", "jobs", "--delay", "0", "2"]);
    assert_eq!(nacked["action"], "nack");
    assert_eq!(nacked["messages"][0]["id"], 2);
    assert_eq!(nacked["messages"][0]["state"], "ready");
    let touched = s.json(&["touch", "-q", "jobs", "--lease", "1h", "3"]);
    assert_eq!(touched["messages"][0]["state"], "reserved");
    assert_eq!(s.ok(&["bury", "-q", "jobs", "4"]), "buried 4\n");

    // The nacked message comes back with its attempt counted; the touched
    // one stays reserved.
    let again = s.json_lines(&["reserve", "-q", "jobs", "-n", "5", "--ack"], 0);
    assert_eq!(ids(&again), vec![2]);
    assert_eq!(again[0]["attempt"], 2);
    assert_eq!(again[0]["payload"], "two");
    assert_eq!(s.ok(&["ack", "-q", "jobs", "3"]), "acked 3\n");

    let stats = s.json(&["stats", "-q", "jobs"]);
    let group = &stats["queues"][0]["groups"][0];
    assert_eq!(group["acked_total"], 3);
    assert_eq!(
        (
            group["ready"].as_u64(),
            group["reserved"].as_u64(),
            group["buried"].as_u64()
        ),
        (Some(0), Some(0), Some(1))
    );
}

#[test]
fn settling_a_message_that_is_not_reserved_is_refused_with_exit_2() {
    let s = TestStore::new();
    s.push_lines("jobs", &["a", "b", "c"]);
    s.ok(&["reserve", "-q", "jobs", "--ack"]);
    assert_eq!(ids(&s.json_lines(&["reserve", "-q", "jobs"], 0)), vec![2]);

    // Never delivered, acked already, never pushed.
    refused(
        &s,
        &["ack", "-q", "jobs", "3"],
        &[
            r#"nothing was acked: message 3 is not reserved in group "default""#,
            "never delivered",
        ],
    );
    refused(
        &s,
        &["ack", "-q", "jobs", "1"],
        &["message 1 is not reserved", "acknowledged already"],
    );
    refused(
        &s,
        &["touch", "-q", "jobs", "99"],
        &["nothing was touched: message 99 is not reserved"],
    );
    // One reserved and one not: nothing is settled.
    refused(
        &s,
        &["nack", "-q", "jobs", "2", "3"],
        &["nothing was nacked", "message 3 is not reserved"],
    );
    refused(
        &s,
        &["bury", "-q", "jobs", "2", "3"],
        &["nothing was buried"],
    );
    assert_eq!(state(&s, 2), ("reserved".to_owned(), 1));
    assert_eq!(state(&s, 3), ("ready".to_owned(), 0));
    // The refusals changed nothing: the reserved one is still settled.
    assert_eq!(s.ok(&["ack", "-q", "jobs", "2"]), "acked 2\n");
    refused(
        &s,
        &["ack", "-q", "jobs", "-g", "nope", "2"],
        &[r#"no group "nope""#],
    );
}

#[test]
fn a_lease_that_ran_out_cannot_be_settled_and_the_message_comes_back() {
    let s = TestStore::new();
    s.push_lines("jobs", &["slow"]);
    let taken = s.json_lines(&["reserve", "-q", "jobs", "--lease", "300ms"], 0);
    sleep_past(taken[0]["held_until_ms"].as_u64().unwrap());
    refused(
        &s,
        &["ack", "-q", "jobs", "1"],
        &["message 1 is not reserved", "lease ran out"],
    );
    let again = s.json_lines(&["reserve", "-q", "jobs", "--ack"], 0);
    assert_eq!(
        (again[0]["id"].as_u64(), again[0]["attempt"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn touch_extends_the_lease() {
    let s = TestStore::new();
    s.push_lines("jobs", &["long job"]);
    let taken = s.json_lines(&["reserve", "-q", "jobs", "--lease", "2s"], 0);
    let first_until = taken[0]["held_until_ms"].as_u64().unwrap();
    let touched = s.json(&["touch", "-q", "jobs", "--lease", "1h", "1"]);
    assert_eq!(touched["action"], "touch");
    assert_eq!(touched["messages"][0]["state"], "reserved");
    let until = touched["messages"][0]["until_ms"].as_u64().unwrap();
    assert!(until >= first_until + 3_500_000, "{until} vs {first_until}");
    let text = s.ok(&["touch", "-q", "jobs", "--lease", "1h", "1"]);
    assert!(text.starts_with("touched 1: reserved until "), "{text}");

    // Past the first lease, the message is still reserved.
    sleep_past(first_until);
    s.run(&["reserve", "-q", "jobs"]).expect_code(4);
    let peeked = &s.json_lines(&["peek", "-q", "jobs", "1"], 0)[0];
    assert_eq!(peeked["state"], "reserved");
    assert!(peeked["remaining_ms"].as_u64().unwrap() > 3_000_000);
    assert_eq!(s.ok(&["ack", "-q", "jobs", "1"]), "acked 1\n");
}

#[test]
fn nack_with_a_delay_and_with_the_backoff() {
    let s = TestStore::new();
    s.push_lines("jobs", &["x", "y"]);
    s.ok(&["reserve", "-q", "jobs", "-n", "2"]);
    let before = now_ms();
    let nacked = s.json(&["nack", "-q", "jobs", "--delay", "1h", "1"]);
    let m = &nacked["messages"][0];
    assert_eq!(m["state"], "delayed");
    let until = m["until_ms"].as_u64().unwrap();
    assert!(
        (before + 3_600_000..=now_ms() + 3_600_000).contains(&until),
        "{until}"
    );
    // The backoff after a first attempt: 1 s, ±20 %.
    let out = s.ok(&["nack", "-q", "jobs", "2"]);
    assert!(out.starts_with("nacked 2: ready at "), "{out}");

    // Neither is ready now; the one due first is the backoff's.
    s.run(&["reserve", "-q", "jobs"]).expect_code(4);
    let delayed = s.json_lines(&["peek", "-q", "jobs", "--delayed"], 0);
    assert_eq!(delayed[0]["id"], 2);
    assert!(delayed[0]["until_ms"].as_u64().unwrap() < before + 10_000);
    sleep_past(delayed[0]["until_ms"].as_u64().unwrap());
    let again = s.json_lines(&["reserve", "-q", "jobs", "--ack"], 0);
    assert_eq!(
        (again[0]["id"].as_u64(), again[0]["attempt"].as_u64()),
        (Some(2), Some(2))
    );
    // kick --id makes a delayed message ready now.
    assert_eq!(
        s.ok(&["kick", "-q", "jobs", "--id", "1"]),
        "kicked 1 message\n"
    );
    assert_eq!(state(&s, 1), ("ready".to_owned(), 0));
}

#[test]
fn bury_then_kick() {
    let s = TestStore::new();
    s.push_lines("jobs", &["poison", "fine"]);
    s.ok(&["reserve", "-q", "jobs"]);
    assert_eq!(s.ok(&["bury", "-q", "jobs", "1"]), "buried 1\n");
    let buried = s.json_lines(&["peek", "-q", "jobs", "--buried"], 0);
    assert_eq!(
        (buried[0]["id"].as_u64(), buried[0]["attempts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(buried[0]["payload"], "poison");
    // Buried: not delivered, not settled again.
    assert_eq!(
        ids(&s.json_lines(&["reserve", "-q", "jobs", "-n", "5", "--ack"], 0)),
        vec![2]
    );
    refused(
        &s,
        &["ack", "-q", "jobs", "1"],
        &[
            "message 1 is not reserved",
            "it is buried",
            "millpond kick --id 1",
        ],
    );
    refused(&s, &["kick", "-q", "jobs", "--id", "2"], &["not buried"]);

    assert_eq!(s.json(&["kick", "-q", "jobs"])["kicked"], 1);
    s.run(&["peek", "-q", "jobs", "--buried"]).expect_code(4);
    // Kicked: ready, its attempts counted from zero again.
    let again = s.json_lines(&["reserve", "-q", "jobs", "--ack"], 0);
    assert_eq!(
        (again[0]["id"].as_u64(), again[0]["attempt"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s.json(&["kick", "-q", "jobs"])["kicked"], 0);
}

#[test]
fn peek_shows_the_next_message_without_taking_it() {
    let s = TestStore::new();
    s.push_lines("q", &["x", "y"]);
    let out = s.ok(&["peek", "-q", "q", "--ready"]);
    assert!(
        out.starts_with("id 1  ready  attempts 0  priority 0"),
        "{out}"
    );
    assert!(out.ends_with("\nx\n"), "{out}");
    assert_eq!(s.ok(&["peek", "-q", "q", "--ready", "--raw"]), "x");
    assert_eq!(s.ok(&["reserve", "-q", "q", "--ack"]), "x\n");
    s.run(&["peek", "-q", "q", "1"]).expect_code(4);
    s.run(&["peek", "-q", "q", "--buried"]).expect_code(4);
}

#[test]
fn a_new_group_sees_every_message() {
    let s = TestStore::new();
    s.push_lines("q", &["a", "b"]);
    s.ok(&["reserve", "-q", "q", "-n", "2", "--ack"]);
    let other = s.json_lines(
        &["reserve", "-q", "q", "-g", "audit", "-n", "5", "--ack"],
        0,
    );
    assert_eq!(ids(&other), vec![1, 2]);
    s.run(&["peek", "-q", "q", "-g", "nope", "1"])
        .expect_code(2);
}
