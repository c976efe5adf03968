//! stats, queues, groups and dump run as real processes; their JSON is
//! parsed and checked against what was pushed.

mod common;

use common::TestStore;

#[test]
fn stats_queues_and_groups_count_what_was_pushed() {
    let s = TestStore::new();
    s.push_lines("jobs", &["a", "b", "c"]);
    s.push_lines("mail", &["m"]);
    s.ok(&["reserve", "-q", "jobs", "--ack"]);
    s.ok(&["reserve", "-q", "jobs", "-g", "audit", "-n", "3", "--ack"]);

    let table = s.ok(&["stats"]);
    assert!(
        table.contains("QUEUE") && table.contains("READY"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("jobs ") && l.contains(" audit ")),
        "{table}"
    );

    let stats = s.json(&["stats"]);
    let queues = stats["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    let jobs = &queues[0];
    assert_eq!(jobs["name"], "jobs");
    assert_eq!(
        (jobs["first_id"].as_u64(), jobs["next_id"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(jobs["messages"], 3);
    assert!(jobs["bytes_on_disk"].as_u64().unwrap() > 32);
    let groups = jobs["groups"].as_array().unwrap();
    let by_name = |n: &str| groups.iter().find(|g| g["name"] == n).unwrap();
    assert_eq!(
        (
            by_name("default")["ready"].as_u64(),
            by_name("default")["acked_total"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        (
            by_name("audit")["ready"].as_u64(),
            by_name("audit")["acked_total"].as_u64()
        ),
        (Some(0), Some(3))
    );

    let queues = s.json(&["queues"]);
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs", "mail"]);
    assert_eq!(queues[1]["messages"], 1);
    assert_eq!(queues[0]["groups"], serde_json::json!(["audit", "default"]));

    let groups = s.json(&["groups", "-q", "jobs"]);
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|g| g["queue"] == "jobs"));
    let listed = s.ok(&["groups"]);
    assert!(
        listed.contains("mail") && listed.contains("audit"),
        "{listed}"
    );

    let missing = s.run(&["stats", "-q", "nope"]).expect_code(2);
    assert!(
        missing.stderr.contains("queues: jobs, mail"),
        "{}",
        missing.stderr
    );
}

#[test]
fn dump_decodes_every_frame() {
    let s = TestStore::new();
    let lines = ["alpha", "beta", "gamma", "delta", "epsilon"];
    s.push_lines("q", &lines);
    let frames = s.json_lines(&["dump", "-q", "q", "--payload"], 0);
    assert_eq!(frames.len(), 5);
    let mut offset = 32;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["id"], i as u64 + 1);
        assert_eq!(f["offset"], offset);
        assert_eq!(f["crc"], "ok");
        assert_eq!(f["payload"], lines[i]);
        assert_eq!(f["size"], 28 + lines[i].len() as u64);
        assert!(
            f["segment"]
                .as_str()
                .unwrap()
                .ends_with("00000000000000000001.seg")
        );
        assert!(f["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
        offset += f["size"].as_u64().unwrap();
    }
    let window = s.json_lines(&["dump", "-q", "q", "--from", "3", "--limit", "2"], 0);
    let ids: Vec<u64> = window.iter().map(|f| f["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![3, 4]);
    assert!(window[0].get("payload").is_none());

    let text = s.ok(&["dump", "-q", "q", "--limit", "1"]);
    assert!(text.contains("00000000000000000001.seg"), "{text}");
    assert!(text.contains("header ok"), "{text}");
    let row = text.lines().nth(2).unwrap();
    assert!(
        row.contains(" 32 ") && row.contains(" ok ") && row.contains("alpha"),
        "{row}"
    );
}
