//! Limits of `millpond serve` that keep clients from holding resources
//! without bound: `--max-connections`, the default job size limit, and a
//! client that sends commands but never reads the replies.

#[path = "common/server.rs"]
mod server;

use std::io::ErrorKind;
use std::time::Duration;

use server::{Reply, Server};

#[test]
fn connections_past_max_connections_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), &["--max-connections", "2"]);
    let mut first = server.connect();
    let mut second = server.connect();
    first.expect("list-tube-used", "USING default");
    second.expect("list-tube-used", "USING default");
    // The third is accepted and closed without a reply
    // (docs/beanstalkd-compat.md: the protocol has no error for it).
    let mut third = server.connect();
    let _ = third.send(b"list-tube-used\r\n");
    assert_eq!(third.read_reply(), Reply::Eof);
    // The first two are unaffected; once one closes, a new one is served.
    first.expect("list-tube-used", "USING default");
    drop(second);
    let mut fourth = None;
    for _ in 0..100 {
        let mut conn = server.connect();
        let _ = conn.send(b"list-tube-used\r\n");
        if conn.read_reply().line() == "USING default" {
            fourth = Some(conn);
            break;
        }
        // The server may not have seen the close yet.
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fourth = fourth.expect("a connection after one of two closed");
    let id = fourth.put(0, 0, 60, b"served");
    assert_eq!(first.reserve(0), (id, b"served".to_vec()));
}

#[test]
fn default_max_job_size_is_beanstalkds_65535() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), &[]);
    let mut conn = server.connect();
    assert_eq!(conn.stat("stats", "max-job-size"), 65535);
    let body = vec![b'j'; 65535];
    let id = conn.put(0, 0, 60, &body);
    assert_eq!(conn.job(&format!("peek {id}"), "FOUND"), (id, body));
    let mut too_big = b"put 0 0 60 65536\r\n".to_vec();
    too_big.extend_from_slice(&[b'j'; 65536]);
    too_big.extend_from_slice(b"\r\n");
    conn.send(&too_big).unwrap();
    assert_eq!(conn.read_reply().line(), "JOB_TOO_BIG");
    // The body was read and thrown away: the connection is in step.
    conn.expect("list-tube-used", "USING default");
    assert_eq!(conn.stat("stats-tube default", "current-jobs-ready"), 1);
}

#[test]
fn client_that_never_reads_replies_is_not_read_from_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("store"), &[]);
    let mut setup = server.connect();
    setup.put(0, 0, 60, &[b'p'; 60_000]);
    // Each `peek-ready` answers 60 KB: 64 MiB of commands would ask for
    // about 300 GB of replies. The server must stop reading from this
    // client instead of buffering replies, so the send blocks and times
    // out long before it is all written.
    let flooder = std::net::TcpStream::connect(server.addr).unwrap();
    flooder
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let commands = b"peek-ready\r\n".repeat((64 << 20) / 12);
    let mut sent = 0usize;
    let blocked = loop {
        match std::io::Write::write(&mut &flooder, &commands[sent..]) {
            Ok(0) => break None,
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Some(e);
            }
            Err(e) => panic!("flooding after {sent} bytes: {e}"),
        }
        if sent == commands.len() {
            break None;
        }
    };
    assert!(
        blocked.is_some(),
        "the server read all {sent} bytes of commands while their replies went unread"
    );
    let rss_kib = rss_kib(&server);
    println!("sent {sent} bytes before blocking; server RSS {rss_kib} KiB");
    assert!(
        rss_kib < 512 * 1024,
        "server resident memory {rss_kib} KiB with one client not reading"
    );
    // Everyone else is still served.
    server.assert_running();
    let mut other = server.connect();
    let id = other.put(0, 0, 60, b"other");
    other.expect(&format!("delete {id}"), "DELETED");
    drop(flooder);
}

/// The server's resident set size, from /proc.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Bytes of the segment files of tube `tube` in `store`.
fn tube_segment_bytes(store: &std::path::Path, tube: &str) -> u64 {
    std::fs::read_dir(store.join("queues").join(tube))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Under `sync` a tube's log runs 64 KiB of zeros ahead of its jobs;
/// `--preallocate-bytes 0` keeps only the jobs.
#[test]
fn preallocate_bytes_zero_keeps_only_the_jobs() {
    for (flag, small) in [(None, false), (Some("0"), true)] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let mut args = vec!["--durability", "sync"];
        if let Some(v) = flag {
            args.extend(["--preallocate-bytes", v]);
        }
        let server = Server::start(&store, &args);
        let mut conn = server.connect();
        let id = conn.put(0, 0, 60, b"one job");
        // Tube `default` is queue `bt.default` (docs/beanstalkd-compat.md).
        let bytes = tube_segment_bytes(&store, "bt.default");
        if small {
            assert!(bytes < 4096, "{flag:?}: {bytes} bytes");
        } else {
            assert!(bytes >= 64 << 10, "{flag:?}: {bytes} bytes");
        }
        assert_eq!(conn.reserve(0), (id, b"one job".to_vec()));
    }
}
