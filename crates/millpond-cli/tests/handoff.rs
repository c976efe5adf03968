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

    // Buried messages come along on request, into another queue.
    let all = dst.json(&[
        "import",
        file.to_str().unwrap(),
        "-q",
        "replay",
        "--include-buried",
    ]);
    assert_eq!(all["imported"], 11);

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
