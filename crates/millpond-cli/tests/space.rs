//! compact gives back the space of finished messages; bench measures and
//! reports throughput and latency percentiles.

mod common;

use common::TestStore;
use millpond::{Options, Store};

#[test]
fn compact_reclaims_finished_segments() {
    let s = TestStore::new();
    {
        // Small segments, so finished messages fill sealed ones.
        let store = Store::open(
            s.path(),
            Options::default()
                .segment_bytes_max(4096)
                .compact_interval(None),
        )
        .unwrap();
        let queue = store.queue("q").unwrap();
        for i in 0..200u32 {
            queue.push(format!("{i:0100}")).unwrap();
        }
        store.close().unwrap();
    }
    let before = s.json(&["stats", "-q", "q"])["queues"][0]["segments"]
        .as_u64()
        .unwrap();
    assert!(before >= 5, "{before} segments");
    assert_eq!(
        s.json_lines(&["reserve", "-q", "q", "-n", "200", "--ack"], 0)
            .len(),
        200
    );
    let report = s.json(&["compact"]);
    assert!(
        report["segments_deleted"].as_u64().unwrap() >= before - 1,
        "{report:#}"
    );
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() > 4096 * (before - 2),
        "{report:#}"
    );
    assert_eq!(report["segments"], 1);
    let after = s.json(&["stats", "-q", "q"]);
    assert_eq!(after["queues"][0]["segments"], 1);
    let text = s.ok(&["compact"]);
    assert!(text.starts_with("reclaimed 0 B"), "{text}");
    s.ok(&["verify"]);
}

#[test]
fn bench_reports_throughput_and_percentiles() {
    let s = TestStore::new();
    let report = s.json(&[
        "bench",
        "--count",
        "600",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--size",
        "64",
        "--durability",
        "buffered",
    ]);
    assert_eq!(report["pushed"], 600);
    assert_eq!(report["consumed"], 600);
    assert_eq!(report["message_bytes"], 64);
    assert!(report["push_per_s"].as_f64().unwrap() > 0.0);
    for key in ["push_latency_us", "end_to_end_latency_us"] {
        let l = &report[key];
        let p = |k: &str| l[k].as_u64().unwrap();
        assert!(
            p("p50") <= p("p99") && p("p99") <= p("p999") && p("p999") <= p("max"),
            "{l}"
        );
    }
    assert_eq!(report["end_to_end_latency_us"]["samples"], 600);
    let text = s.ok(&[
        "bench",
        "--count",
        "100",
        "--consumers",
        "0",
        "--batch",
        "10",
    ]);
    assert!(text.contains("pushed   100 in"), "{text}");
    assert!(
        text.contains("push call latency:") && text.contains("p999"),
        "{text}"
    );
}
