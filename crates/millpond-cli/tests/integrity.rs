//! verify and repair on stores damaged on purpose: verify names the file
//! and offset and exits 1; repair moves the damaged bytes aside; verify
//! then passes and every undamaged message is intact.

mod common;

use common::{TestStore, flip};
use millpond::group::journal::Record;
use serde_json::Value;

fn payload(i: usize) -> String {
    format!("message number {i:03}")
}

fn filled(s: &TestStore) -> Vec<String> {
    let lines: Vec<String> = (1..=20).map(payload).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    s.push_lines("q", &refs);
    lines
}

#[test]
fn a_clean_store_verifies() {
    let s = TestStore::new();
    filled(&s);
    s.ok(&["reserve", "-q", "q", "-n", "2", "--ack"]);
    let out = s.ok(&["verify"]);
    assert!(out.ends_with("result: clean\n"), "{out}");
    let report = s.json(&["verify"]);
    assert_eq!(report["clean"], true);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["frames"], 20);
    assert_eq!(report["segments"], 1);
    assert_eq!(report["groups"], 1);
    assert!(report["problems"].as_array().unwrap().is_empty());
}

#[test]
fn flipped_payload_byte_is_found_repaired_and_the_rest_kept() {
    let s = TestStore::new();
    let lines = filled(&s);
    let frames = s.json_lines(&["dump", "-q", "q"], 0);
    let victim = &frames[7];
    assert_eq!(victim["id"], 8);
    let offset = victim["offset"].as_u64().unwrap();
    let size = victim["size"].as_u64().unwrap();
    let seg = s.segments("q")[0].clone();
    flip(&seg, offset + 28 + 3, 0x20);

    let out = s.run(&["verify"]).expect_code(1);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap();
    assert!(line.contains(seg.to_str().unwrap()), "{line}");
    assert!(line.contains(&format!("at offset {offset}:")), "{line}");
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(line.contains("ids 8..=8"), "{line}");
    let report = s.run(&["verify", "--json"]).expect_code(1);
    let report: Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(report["clean"], false);
    let problem = &report["problems"][0];
    assert_eq!(problem["severity"], "error");
    assert_eq!(problem["file"], seg.to_str().unwrap());
    assert_eq!(
        (problem["offset"].as_u64(), problem["size"].as_u64()),
        (Some(offset), Some(size))
    );

    // dump shows it too.
    let dumped = s.json_lines(&["dump", "-q", "q"], 0);
    assert_eq!(dumped[7]["crc"], "bad");
    assert_eq!(dumped[7]["offset"], offset);

    let damaged_bytes =
        std::fs::read(&seg).unwrap()[offset as usize..(offset + size) as usize].to_vec();
    let out = s.ok(&["repair"]);
    assert!(out.contains("quarantined"), "{out}");
    assert!(out.contains("verify after repair: result: clean"), "{out}");
    let quarantine = s.path().join("quarantine/queues/q").join(format!(
        "{}.quarantine-{offset}",
        seg.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(
        std::fs::read(&quarantine).unwrap(),
        damaged_bytes,
        "quarantined bytes"
    );

    let report = s.json(&["verify"]);
    assert_eq!(report["clean"], true);
    assert_eq!(report["frames"], 19);
    assert_eq!(report["quarantined_files"], 1);

    let got = s.json_lines(&["reserve", "-q", "q", "-n", "100", "--ack"], 0);
    let expected: Vec<(u64, String)> = (1..=20u64)
        .filter(|&id| id != 8)
        .map(|id| (id, lines[id as usize - 1].clone()))
        .collect();
    let got: Vec<(u64, String)> = got
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["payload"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // A second repair has nothing to do.
    assert!(s.ok(&["repair"]).starts_with("nothing to repair"));
}

#[test]
fn a_damaged_index_is_reported_and_removed() {
    let s = TestStore::new();
    filled(&s);
    let index = s.segments("q")[0].with_extension("idx");
    flip(&index, 20, 0x01);
    let out = s.run(&["verify"]).expect_code(1);
    assert!(
        out.stdout.contains(index.to_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("at offset 0: index file header checksum mismatch"),
        "{}",
        out.stdout
    );
    let repaired = s.json(&["repair"]);
    assert_eq!(repaired["actions"][0]["action"], "remove");
    assert_eq!(repaired["verify"]["clean"], true);
    assert!(!index.exists());
    assert_eq!(
        s.json_lines(&["reserve", "-q", "q", "-n", "30", "--ack"], 0)
            .len(),
        20
    );
}

#[test]
fn a_damaged_journal_record_is_quarantined_and_later_records_kept() {
    let s = TestStore::new();
    filled(&s);
    // Journal three deliveries and acks, as a process that crashed before
    // its next checkpoint would have left them.
    let dir = s.path().join("queues/q/groups/default");
    let journal = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().contains("journal-"))
        .unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    assert_eq!(bytes.len(), 32, "a clean close leaves an empty journal");
    for id in 1..=3 {
        let reserve = Record::Reserve {
            id,
            attempts: 1,
            priority: 0,
        };
        bytes.extend_from_slice(&reserve.encode());
        bytes.extend_from_slice(&Record::Ack { id }.encode());
    }
    std::fs::write(&journal, bytes).unwrap();
    // Records start at 32, 24 bytes each: damage the ack of id 2.
    flip(&journal, 32 + 3 * 24 + 10, 0x04);
    let out = s.run(&["verify"]).expect_code(1);
    assert!(
        out.stdout
            .contains(&format!("{} at offset 104:", journal.display())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("valid records follow at offset 128"),
        "{}",
        out.stdout
    );
    let repaired = s.json(&["repair"]);
    assert_eq!(repaired["verify"]["clean"], true, "{repaired:#}");
    assert_eq!(repaired["quarantined_bytes"], 24);
    s.ok(&["verify"]);
    // The acks after the damage survive: only the message whose ack was
    // lost is delivered again, with its first attempt counted.
    let again = s.json_lines(&["reserve", "-q", "q", "-n", "30", "--ack"], 0);
    assert_eq!(again.len(), 18);
    assert_eq!(
        (again[0]["id"].as_u64(), again[0]["attempt"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(again[1]["id"], 4);
}

#[test]
fn a_command_that_meets_damage_exits_1_and_points_at_repair() {
    let s = TestStore::new();
    filled(&s);
    let frames = s.json_lines(&["dump", "-q", "q"], 0);
    let offset = frames[2]["offset"].as_u64().unwrap();
    flip(&s.segments("q")[0], offset + 30, 0x01);
    let out = s
        .run(&["reserve", "-q", "q", "-n", "5", "--ack"])
        .expect_code(1);
    assert!(
        out.stderr.contains(&format!("at offset {offset}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("`millpond repair`"), "{}", out.stderr);
    s.ok(&["repair"]);
    let got = s.json_lines(&["reserve", "-q", "q", "-n", "5", "--ack"], 0);
    let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 4, 5, 6]);
}

/// Zeros after the newest segment's last frame (what a kill leaves of the
/// writer's preallocation) are no damage: verify stays clean, repair
/// changes nothing, and every message is still there.
#[test]
fn zeros_after_the_newest_segments_frames_verify_clean() {
    let s = TestStore::new();
    let lines = filled(&s);
    let seg = s.segments("q").pop().unwrap();
    let before = std::fs::read(&seg).unwrap();
    let mut bytes = before.clone();
    bytes.extend_from_slice(&[0; 65536]);
    std::fs::write(&seg, &bytes).unwrap();
    let report = s.json(&["verify"]);
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["frames"], 20);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let repaired = s.json(&["repair"]);
    assert!(
        repaired["actions"].as_array().unwrap().is_empty(),
        "{repaired}"
    );
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "repair left it alone");
    let got: Vec<String> = s
        .json_lines(&["reserve", "-q", "q", "-n", "30", "--ack"], 0)
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, lines);
}

/// Makes the hole a power cut can leave in the newest segment when
/// unsynced writes reach the disk out of order: zeros from the start of
/// the first frame that crosses a 512-byte boundary (4 bytes or more after
/// its start) to that boundary; the rest of that frame and the later frames
/// stay. Removes the index, so the next open scans the whole segment.
/// Returns the pushed lines, the frame's index among them, its offset and
/// the boundary.
fn out_of_order_hole(s: &TestStore) -> (Vec<String>, usize, u64, u64) {
    let lines = filled(s);
    let frames = s.json_lines(&["dump", "-q", "q"], 0);
    let (victim, start, boundary) = frames
        .iter()
        .enumerate()
        .find_map(|(i, f)| {
            let start = f["offset"].as_u64().unwrap();
            let end = start + f["size"].as_u64().unwrap();
            let boundary = (start / 512 + 1) * 512;
            (boundary - start >= 4 && end > boundary).then_some((i, start, boundary))
        })
        .expect("a frame crosses a sector boundary");
    let seg = s.segments("q").pop().unwrap();
    std::fs::remove_file(seg.with_extension("idx")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[start as usize..boundary as usize].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    (lines, victim, start, boundary)
}

/// The payloads a drain of queue `q` gets.
fn drained(s: &TestStore) -> Vec<String> {
    s.json_lines(&["reserve", "-q", "q", "-n", "30", "--ack"], 0)
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_owned())
        .collect()
}

/// The next open cuts the newest segment at an out-of-order hole of
/// unsynced writes, as at a torn tail; verify says so as a warning, not as
/// damage (it used to report an error the open never met), and the open
/// keeps the frames before the hole.
#[test]
fn an_out_of_order_hole_in_the_newest_segment_is_a_warning_that_open_cuts() {
    let s = TestStore::new();
    let (lines, victim, start, boundary) = out_of_order_hole(&s);
    let report = s.json(&["verify"]);
    assert_eq!(report["errors"], 0, "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    let p = &problems[0];
    assert_eq!(p["severity"], "warning", "{p}");
    assert_eq!(p["offset"], start, "{p}");
    let detail = p["detail"].as_str().unwrap();
    let after = lines.len() - victim - 1;
    assert!(
        detail.contains(&format!(
            "zero-filled gap of {} bytes to a sector boundary",
            boundary - start
        )) && detail.contains(&format!("followed by {after} frames never made durable")),
        "{detail}"
    );
    assert_eq!(report["frames"], victim, "frames the open keeps");
    assert_eq!(drained(&s), lines[..victim]);
    let report = s.json(&["verify"]);
    assert_eq!(report["clean"], true, "{report}");
}

/// repair moves an out-of-order hole aside with everything after it, as
/// the open would cut it, rather than keeping the never-durable frames
/// after it as if the hole were damage between durable ones.
#[test]
fn repair_moves_an_out_of_order_hole_and_what_follows_aside() {
    let s = TestStore::new();
    let (lines, victim, start, _) = out_of_order_hole(&s);
    let seg_len = std::fs::metadata(s.segments("q").pop().unwrap())
        .unwrap()
        .len();
    let repaired = s.json(&["repair"]);
    let actions = repaired["actions"].as_array().unwrap();
    let quarantined: Vec<&Value> = actions
        .iter()
        .filter(|a| a["action"] == "quarantine")
        .collect();
    assert_eq!(quarantined.len(), 1, "{repaired}");
    assert_eq!(quarantined[0]["offset"], start, "{repaired}");
    assert_eq!(quarantined[0]["size"], seg_len - start, "{repaired}");
    let report = s.json(&["verify"]);
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["frames"], victim);
    assert_eq!(drained(&s), lines[..victim]);
}

/// The older kind of hole, a whole unsynced frame that reads back as
/// zeros with valid frames after it, which the open already cut: verify
/// reported it as damage too.
#[test]
fn an_all_zero_hole_in_the_newest_segment_is_a_warning_too() {
    let s = TestStore::new();
    let lines = filled(&s);
    let frames = s.json_lines(&["dump", "-q", "q"], 0);
    let start = frames[5]["offset"].as_u64().unwrap() as usize;
    let size = frames[5]["size"].as_u64().unwrap() as usize;
    let seg = s.segments("q").pop().unwrap();
    std::fs::remove_file(seg.with_extension("idx")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[start..start + size].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let report = s.json(&["verify"]);
    assert_eq!(report["errors"], 0, "{report}");
    let p = &report["problems"][0];
    assert_eq!(p["severity"], "warning", "{p}");
    assert!(
        p["detail"].as_str().unwrap().starts_with(&format!(
            "zero-filled gap of {size} bytes followed by {} frames",
            lines.len() - 6
        )),
        "{p}"
    );
    assert_eq!(drained(&s), lines[..5]);
}
