//! export → import between two store directories: identical payloads and
//! priorities, delays carried over; a truncated or bit-flipped export file
//! is refused with the offset of the damage and nothing is imported.

mod common;

use common::{TestStore, flip};
use serde_json::Value;

/// Fills a store: ten plain messages, one with a priority, one binary, one
/// delayed; the first two finished, the third reserved (its lease kept by
/// the clean close of the command that took it), the fourth buried.
fn source() -> TestStore {
    let s = TestStore::new();
    let lines: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    s.push_lines("jobs", &refs);
    let jsonl = concat!(
        r#"{"payload": "urgent", "priority": 3}"#,
        "\n",
        r#"{"payload_b64": "AAEC/w=="}"#,
        "\n",
        r#"{"payload": "later", "delay_ms": 600000, "priority": 1}"#,
        "\n"
    );
    s.run_with_stdin(&["push", "-q", "jobs", "--jsonl"], Some(jsonl.as_bytes()))
        .expect_code(0);
    let done = s.json_lines(&["reserve", "-q", "jobs", "-n", "2", "--ack"], 0);
    assert_eq!(done[0]["payload"], "m0");
    s.ok(&["reserve", "-q", "jobs", "-n", "2"]);
    s.ok(&["bury", "-q", "jobs", "4"]);
    s
}

/// (payload, priority, not before > 0) of every frame, from dump.
fn frames(s: &TestStore, queue: &str) -> Vec<(Value, u64, bool)> {
    s.json_lines(&["dump", "-q", queue, "--payload"], 0)
        .iter()
        .map(|f| {
            let payload = f.get("payload").or(f.get("payload_b64")).unwrap().clone();
            (
                payload,
                f["priority"].as_u64().unwrap(),
                f["not_before_ms"].as_u64().unwrap() > 0,
            )
        })
        .collect()
}

#[test]
fn export_then_import_into_another_store_keeps_every_unfinished_message() {
    let src = source();
    let file = src.dir.path().join("jobs.mpx");
    let exported = src.json(&["export", "-q", "jobs", "--out", file.to_str().unwrap()]);
    assert_eq!(exported["messages"], 11);
    assert_eq!(exported["buried"], 1);
    assert_eq!(exported["delayed"], 1);
    assert_eq!(exported["reserved"], 1, "its lease still running");
    assert_eq!(
        exported["file_bytes"],
        std::fs::metadata(&file).unwrap().len()
    );

    let dst = TestStore::new();
    let imported = dst.json(&["import", file.to_str().unwrap()]);
    assert_eq!(imported["queue"], "jobs");
    assert_eq!(imported["imported"], 10);
    assert_eq!(imported["skipped_buried"], 1);
    assert_eq!(
        (imported["first_id"].as_u64(), imported["last_id"].as_u64()),
        (Some(1), Some(10))
    );

    // Same payloads, priorities and delays, in the same order, minus the
    // finished and the buried messages; the reserved one comes in ready.
    let expected: Vec<_> = frames(&src, "jobs")
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ![0, 1, 3].contains(i))
        .map(|(_, frame)| frame)
        .collect();
    assert_eq!(frames(&dst, "jobs"), expected);
    assert!(expected.iter().any(|(p, _, _)| p == "AAEC/w=="));
    assert!(
        expected
            .iter()
            .any(|(p, prio, _)| p == "urgent" && *prio == 3)
    );

    // Run again, the import finds its record in the store: nothing pushed.
    let again = dst.json(&["import", file.to_str().unwrap()]);
    assert_eq!(again["already_imported"], true);
    assert_eq!(again["imported"], 10);
    assert_eq!(frames(&dst, "jobs"), expected);

    // Buried messages come along on request, into another queue: a second
    // import of the file, so `--again`.
    let all = dst.json(&[
        "import",
        file.to_str().unwrap(),
        "-q",
        "replay",
        "--include-buried",
        "--again",
    ]);
    assert_eq!(all["already_imported"], false);
    assert_eq!(all["imported"], 11);
    assert_eq!(frames(&dst, "replay").len(), 11);
    assert_eq!(
        frames(&dst, "jobs"),
        expected,
        "the first import's queue untouched"
    );

    // The export refuses to overwrite.
    let again = src
        .run(&["export", "-q", "jobs", "--out", file.to_str().unwrap()])
        .expect_code(2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
}

/// Offsets of the records of an export file (header, then 48 + n each).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let header_len = 24 + usize::from(bytes[12]) + usize::from(bytes[13]) + 4;
    let mut offsets = Vec::new();
    let mut at = header_len;
    while bytes[at + 4] == 1 {
        offsets.push(at);
        let n = u32::from_le_bytes(bytes[at + 40..at + 44].try_into().unwrap()) as usize;
        at += 48 + n;
    }
    offsets.push(at); // the end record
    offsets
}

#[test]
fn damaged_export_files_are_refused_with_the_offset() {
    let src = source();
    let file = src.dir.path().join("jobs.mpx");
    src.ok(&["export", "-q", "jobs", "--out", file.to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 12);
    let dst = TestStore::new();
    let refused = |path: &std::path::Path, offset: usize| {
        let out = dst.run(&["import", path.to_str().unwrap()]).expect_code(1);
        assert!(
            out.stderr.contains(&format!("damaged at offset {offset}:")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was imported"),
            "{}",
            out.stderr
        );
        assert!(!dst.path().exists(), "the store was not even created");
    };

    // Cut in the end record, in the middle of a record, at a record
    // boundary.
    let truncated = src.dir.path().join("truncated.mpx");
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    refused(&truncated, offsets[11]);
    std::fs::write(&truncated, &bytes[..offsets[5] + 20]).unwrap();
    refused(&truncated, offsets[5]);
    std::fs::write(&truncated, &bytes[..offsets[5]]).unwrap();
    refused(&truncated, offsets[5]);

    // A flipped bit in a payload, and in a priority.
    let flipped = src.dir.path().join("flipped.mpx");
    std::fs::write(&flipped, &bytes).unwrap();
    flip(&flipped, (offsets[3] + 48) as u64, 0x40);
    refused(&flipped, offsets[3]);
    std::fs::write(&flipped, &bytes).unwrap();
    flip(&flipped, (offsets[8] + 32) as u64, 0x01);
    refused(&flipped, offsets[8]);
    let out = dst
        .run(&["import", flipped.to_str().unwrap()])
        .expect_code(1);
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);

    // Not an export file at all.
    std::fs::write(&flipped, b"hello").unwrap();
    refused(&flipped, 0);
}

/// The import records of a store: (complete, records done) of each.
fn import_records(s: &TestStore) -> Vec<(bool, u64)> {
    let Ok(entries) = std::fs::read_dir(s.path().join("imports")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (
                v["complete"].as_bool().unwrap(),
                v["records_done"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// An import killed with SIGKILL part of the way through, then run again,
/// leaves every exported message in the queue exactly once and in order:
/// the messages of the batch the kill interrupted that reached the queue
/// are found, not pushed again. An interrupted import cannot be finished
/// into another queue by mistake.
#[test]
fn an_import_killed_midway_finishes_when_run_again_without_duplicates() {
    const N: usize = 100_000;
    let src = TestStore::new();
    let lines: Vec<String> = (0..N).map(|i| format!("job-{i:06}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    src.push_lines("jobs", &refs);
    let file = src.dir.path().join("jobs.mpx");
    src.ok(&["export", "-q", "jobs", "--out", file.to_str().unwrap()]);
    // Kills at fractions of how long a whole import takes here.
    let started = std::time::Instant::now();
    TestStore::new().ok(&["import", file.to_str().unwrap()]);
    let whole = started.elapsed();

    let mut resumed_rounds = 0;
    for (round, fraction) in [0.3, 0.45, 0.6, 0.7, 0.8, 0.9].into_iter().enumerate() {
        let dst = TestStore::new();
        let store = dst.path();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_millpond"))
            .args(["--store", store.to_str().unwrap(), "import"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(fraction));
        child.kill().unwrap();
        child.wait().unwrap();
        let records = import_records(&dst);
        let interrupted = records
            .iter()
            .any(|&(complete, done)| !complete && done > 0);
        if interrupted {
            resumed_rounds += 1;
            if round % 2 == 0 {
                let wrong = dst
                    .run(&["import", file.to_str().unwrap(), "-q", "elsewhere"])
                    .expect_code(2);
                assert!(
                    wrong.stderr.contains("an interrupted import"),
                    "{}",
                    wrong.stderr
                );
            }
        }
        let finished_before = records == vec![(true, N as u64)];
        let out = dst.json(&["import", file.to_str().unwrap()]);
        assert_eq!(out["imported"], N as u64, "round {round}");
        assert_eq!(out["already_imported"], finished_before, "round {round}");
        let payloads: Vec<String> = dst
            .json_lines(&["dump", "-q", "jobs", "--payload"], 0)
            .iter()
            .map(|f| f["payload"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(payloads.len(), N, "round {round}: each message once");
        assert!(
            payloads == lines,
            "round {round}: the file's messages in order"
        );
        assert_eq!(import_records(&dst), vec![(true, N as u64)]);
    }
    assert!(
        resumed_rounds >= 2,
        "only {resumed_rounds} kills landed inside the push phase (a whole import: {whole:?})"
    );
}

/// Writes the store's import record for `file` by hand: an import that
/// was interrupted in its first batch, which was to start at id 1.
fn interrupted_record(dst: &TestStore, file: &std::path::Path) {
    let bytes = std::fs::read(file).unwrap();
    let exported_ms = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let checksum = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let dir = dst.path().join("imports");
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "version": 1, "file": file.display().to_string(), "queue": "jobs",
        "include_buried": false, "records_done": 0, "next_id": 1, "imported": 0,
        "delayed": 0, "skipped_buried": 0, "first_id": null, "last_id": null,
        "complete": false,
    });
    std::fs::write(
        dir.join(format!("{exported_ms}-{checksum:08x}.json")),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
}

/// The part of an interrupted batch that reached the queue is matched
/// message by message (payload and priority, from the batch's first id)
/// and not pushed again; matching stops at the first message that is not
/// the file's (another producer's, pushed after the crash), and the rest of
/// the file goes in after it.
#[test]
fn what_an_interrupted_batch_left_in_the_queue_is_found_not_pushed_again() {
    let src = TestStore::new();
    let lines: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    src.push_lines("jobs", &refs);
    let file = src.dir.path().join("jobs.mpx");
    src.ok(&["export", "-q", "jobs", "--out", file.to_str().unwrap()]);
    let payloads = |s: &TestStore| -> Vec<String> {
        s.json_lines(&["dump", "-q", "jobs", "--payload"], 0)
            .iter()
            .map(|f| f["payload"].as_str().unwrap().to_owned())
            .collect()
    };

    // The batch got its first five messages in before the crash.
    let dst = TestStore::new();
    dst.push_lines("jobs", &refs[..5]);
    interrupted_record(&dst, &file);
    let out = dst.json(&["import", file.to_str().unwrap()]);
    assert_eq!(out["found_from_interrupted_run"], 5);
    assert_eq!(out["imported"], 10);
    assert_eq!(
        (out["first_id"].as_u64(), out["last_id"].as_u64()),
        (Some(1), Some(10))
    );
    assert_eq!(payloads(&dst), lines);

    // Three got in, then another producer pushed before the import ran
    // again.
    let dst = TestStore::new();
    dst.push_lines("jobs", &[&refs[..3], &["other"]].concat());
    interrupted_record(&dst, &file);
    let out = dst.json(&["import", file.to_str().unwrap()]);
    assert_eq!(out["found_from_interrupted_run"], 3);
    assert_eq!(out["imported"], 10);
    let mut expected = lines[..3].to_vec();
    expected.push("other".into());
    expected.extend_from_slice(&lines[3..]);
    assert_eq!(payloads(&dst), expected);
}
