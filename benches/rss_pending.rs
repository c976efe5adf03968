//! Resident memory of a store holding many pending messages: prints
//! figures, no criterion (`harness = false`).
//!
//! `MILLPOND_BENCH_BIG=1 cargo bench --bench rss_pending` pushes 50 M
//! 100-byte messages (6.4 GB of segment files: check `df -h /tmp` first);
//! without it, 5 M (0.64 GB). `MILLPOND_BENCH_RSS_MESSAGES=<n>` sets the
//! count. The store lives in a temporary directory under `$TMPDIR`
//! (default `/tmp`), deleted at the end.
//!
//! It reads `VmRSS`, `RssAnon` (heap and other private memory: what the
//! engine holds) and `RssFile` (file-backed pages mapped into the process:
//! sealed segments and index files are memory-mapped, and the kernel may
//! drop those pages at will) from `/proc/self/status`:
//!
//! 1. at start;
//! 2. after opening an empty store, its queue and the `default` group;
//! 3. after pushing the messages in FIFO order (`Durability::Buffered`,
//!    `push_batch` of 1,000, then `flush`);
//! 4. after `reserve` + `ack` of 10 messages (the group has scanned);
//! 5. after a clean close and reopening the store, queue and group;
//! 6. after `reserve` + `ack` of 10 more, and reading the newest message.
//!
//! Figures are reported beyond step 2 (the empty store).

use std::time::{Duration, Instant};

use millpond::{DEFAULT_GROUP, Durability, Options, Store};

#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    vm_rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
}

/// Reads the figures (KiB) from `/proc/self/status`.
fn rss() -> Rss {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let mut r = Rss::default();
    for line in status.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let v: u64 = value.parse().unwrap_or(0);
        match key {
            "VmRSS:" => r.vm_rss = v,
            "RssAnon:" => r.anon = v,
            "RssFile:" => r.file = v,
            "VmHWM:" => r.hwm = v,
            _ => {}
        }
    }
    r
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(step: &str, base: Option<Rss>) -> Rss {
    let r = rss();
    let (d_rss, d_anon, d_file) = match base {
        Some(b) => (
            mib(r.vm_rss) - mib(b.vm_rss),
            mib(r.anon) - mib(b.anon),
            mib(r.file) - mib(b.file),
        ),
        None => (0.0, 0.0, 0.0),
    };
    println!(
        "{step:<44} VmRSS {:8.1} MiB  RssAnon {:8.1} MiB  RssFile {:8.1} MiB  VmHWM {:8.1} MiB  | beyond empty store: VmRSS {d_rss:+8.1}  RssAnon {d_anon:+8.1}  RssFile {d_file:+8.1} MiB",
        mib(r.vm_rss),
        mib(r.anon),
        mib(r.file),
        mib(r.hwm),
    );
    r
}

fn main() {
    let count: u64 = match std::env::var("MILLPOND_BENCH_RSS_MESSAGES") {
        Ok(v) => v.parse().expect("MILLPOND_BENCH_RSS_MESSAGES"),
        Err(_) if std::env::var("MILLPOND_BENCH_BIG").is_ok_and(|v| v == "1") => 50_000_000,
        Err(_) => 5_000_000,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    println!(
        "rss_pending: {count} messages of 100 bytes ({:.2} GB of frames) in {}",
        count as f64 * 128.0 / 1e9,
        path.display()
    );
    report("1. start", None);
    let options = Options::default().durability(Durability::Buffered);

    let store = Store::open(&path, options.clone()).expect("open");
    let q = store.queue("bench").expect("queue");
    let grp = q.group(DEFAULT_GROUP).expect("group");
    let empty = report("2. empty store, queue, group open", None);

    let t = Instant::now();
    let batch = vec![[0xA5u8; 100]; 1000];
    let mut left = count;
    while left > 0 {
        let k = left.min(1000) as usize;
        q.push_batch(&batch[..k]).expect("push_batch");
        left -= k as u64;
    }
    q.flush().expect("flush");
    let stats = q.log_stats().expect("stats");
    println!(
        "   pushed in {:.1?}: {} segments, {:.2} GB on disk",
        t.elapsed(),
        stats.segments,
        stats.bytes_on_disk as f64 / 1e9
    );
    report(&format!("3. after pushing {count}"), Some(empty));

    let lease = Duration::from_secs(600);
    for _ in 0..10 {
        let d = grp.reserve(lease).expect("reserve").expect("message");
        grp.ack(d.id).expect("ack");
    }
    let gs = grp.stats().expect("stats");
    println!("   group: ready {} acked {}", gs.ready, gs.acked_total);
    report("4. after reserve + ack of 10", Some(empty));

    drop(grp);
    drop(q);
    store.close().expect("close");
    drop(store);
    report("   after close (allocator may keep freed)", Some(empty));

    let t = Instant::now();
    let store = Store::open(&path, options).expect("reopen");
    let q = store.queue("bench").expect("queue");
    let grp = q.group(DEFAULT_GROUP).expect("group");
    println!(
        "   reopened in {:.1?} (segments scanned {})",
        t.elapsed(),
        store.recovery_report().segments_scanned()
    );
    report(&format!("5. reopened with {count} pending"), Some(empty));
    for _ in 0..10 {
        let d = grp.reserve(lease).expect("reserve").expect("message");
        grp.ack(d.id).expect("ack");
    }
    let last = q.next_id() - 1;
    let m = q.read(last).expect("read").expect("newest message");
    assert_eq!(m.payload.len(), 100);
    let gs = grp.stats().expect("stats");
    println!("   group: ready {} acked {}", gs.ready, gs.acked_total);
    report("6. reopened + reserve/ack 10 + read newest", Some(empty));

    drop(grp);
    drop(q);
    store.close().expect("close");
    drop(store);
    let t = Instant::now();
    drop(dir);
    println!("   store deleted in {:.1?}", t.elapsed());
}
