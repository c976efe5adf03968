//! Graceful shutdown of `millpond serve`: SIGTERM or SIGINT while clients
//! are connected (idle, waiting in `reserve`, holding a reservation) ends
//! the process with exit code 0, every client sees its connection end, and
//! the jobs put before are there after a restart, in their states (a
//! reserved one ready again), also under relaxed durability.

#[path = "common/server.rs"]
mod server;

use std::path::Path;

use rustix::process::Signal;
use server::{Reply, Server};

fn shutdown_with(signal: Signal, durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut server = Server::start(&store, &["--durability", durability]);
    let mut producer = server.connect();
    producer.expect("use kept", "USING kept");
    let kept = producer.put(5, 0, 60, b"put before the signal");
    let held = producer.put(6, 0, 60, b"reserved at the signal");
    let delayed = producer.put(7, 3600, 60, b"delayed an hour");
    let buried = producer.put(8, 0, 60, b"buried");
    producer.expect(
        &format!("reserve-job {buried}"),
        &format!("RESERVED {buried} 6"),
    );
    producer.expect(&format!("bury {buried} 8"), "BURIED");
    let mut holder = server.connect();
    holder.expect("watch kept", "WATCHING 2");
    holder.expect(
        &format!("reserve-job {held}"),
        &format!("RESERVED {held} 22"),
    );
    let mut waiter = server.connect();
    waiter.expect("watch empty", "WATCHING 2");
    waiter.expect("ignore default", "WATCHING 1");
    waiter.send(b"reserve\r\n").unwrap();
    let mut idle = server.connect();
    idle.expect("list-tube-used", "USING default");

    server.signal(signal);
    let status = server.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after {signal:?}: {status}; stderr:\n{}",
        server.stderr()
    );
    // Every connection is closed (the waiter may first get an answer).
    for (name, conn) in [
        ("producer", &mut producer),
        ("holder", &mut holder),
        ("idle", &mut idle),
    ] {
        assert_eq!(conn.read_reply(), Reply::Eof, "{name} after {signal:?}");
    }
    let waited = waiter.read_reply();
    if waited != Reply::Eof {
        assert!(
            matches!(waited.line(), "DRAINING" | "TIMED_OUT"),
            "a waiting reserve after {signal:?}: {waited:?}"
        );
        assert_eq!(waiter.read_reply(), Reply::Eof);
    }
    drop(server);

    restarted_has(&store, kept, held, delayed, buried);
}

/// After a restart: the jobs are there, in the states a clean shutdown
/// leaves (the reservation ended with its connection).
fn restarted_has(store: &Path, kept: u64, held: u64, delayed: u64, buried: u64) {
    let server = Server::start(store, &[]);
    let mut conn = server.connect();
    conn.expect("use kept", "USING kept");
    assert_eq!(
        conn.job(&format!("peek {kept}"), "FOUND"),
        (kept, b"put before the signal".to_vec())
    );
    assert_eq!(
        conn.job(&format!("peek {held}"), "FOUND"),
        (held, b"reserved at the signal".to_vec())
    );
    assert_eq!(
        conn.job("peek-delayed", "FOUND"),
        (delayed, b"delayed an hour".to_vec())
    );
    assert_eq!(
        conn.job("peek-buried", "FOUND"),
        (buried, b"buried".to_vec())
    );
    conn.expect("watch kept", "WATCHING 2");
    conn.expect("ignore default", "WATCHING 1");
    // The reservation ended with its connection (docs/beanstalkd-compat.md:
    // after a clean shutdown, reservations of closed connections were
    // released): both are ready, in priority order.
    assert_eq!(conn.reserve(0).0, kept);
    assert_eq!(conn.reserve(0).0, held);
    conn.expect("reserve-with-timeout 0", "TIMED_OUT");
    let stats = conn.stats("stats-tube kept");
    let value = |key: &str| {
        stats
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {stats:?}"))
    };
    assert_eq!(value("current-jobs-reserved"), "2");
    assert_eq!(value("current-jobs-delayed"), "1");
    assert_eq!(value("current-jobs-buried"), "1");
}

#[test]
fn sigterm_with_clients_connected_exits_0_and_keeps_jobs() {
    shutdown_with(Signal::TERM, "sync");
}

#[test]
fn sigint_with_clients_connected_exits_0_and_keeps_jobs() {
    shutdown_with(Signal::INT, "sync");
}

#[test]
fn sigterm_under_buffered_durability_flushes_before_exit() {
    shutdown_with(Signal::TERM, "buffered");
}

#[test]
fn sigterm_under_a_long_interval_flushes_before_exit() {
    // The interval timer never fires within the test: whatever the server
    // holds back until then, the shutdown must write.
    shutdown_with(Signal::TERM, "interval:60s");
}

#[test]
fn sigterm_with_no_clients_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), &[]);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
}
