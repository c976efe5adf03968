//! Durability end to end: `millpond serve --durability sync` is killed with
//! SIGKILL while several clients put and one reserves and deletes; after a
//! restart every job whose `INSERTED <id>` a client read is there with its
//! body, every job whose `DELETED` a client read is gone, and jobs that
//! were reserved but not deleted are ready again. Several rounds on the
//! same store.

#[path = "common/server.rs"]
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use server::{Reply, Server};

const ROUNDS: usize = 3;
const PUTTERS: usize = 4;
/// Jobs reserved (and never deleted) just before each kill.
const HELD: usize = 5;
/// The TTR of the held jobs: long enough that they are still reserved when
/// the server is killed, short enough to come back soon after a restart.
const HELD_TTR_SECS: u32 = 2;
/// How long the putters run before the kill.
const PUT_WINDOW: Duration = Duration::from_millis(400);

fn start(store: &Path) -> Server {
    Server::start(store, &["--durability", "sync"])
}

/// Puts `round-client-n` bodies into tube `work` until the server dies;
/// returns what the server acknowledged.
fn putter(
    addr: std::net::SocketAddr,
    round: usize,
    client: usize,
    ready: Arc<Barrier>,
) -> Vec<(u64, Vec<u8>)> {
    let mut conn = server::Conn::connect(addr);
    conn.expect("use work", "USING work");
    ready.wait();
    let mut acknowledged = Vec::new();
    for n in 0.. {
        let body = format!("r{round}-c{client}-{n}").into_bytes();
        match conn.try_put(0, 0, 60, &body) {
            Some(id) => acknowledged.push((id, body)),
            None => break,
        }
    }
    acknowledged
}

/// What the worker saw before the server died.
struct Work {
    /// Jobs it reserved and read `DELETED` for, with their bodies.
    deleted: Vec<(u64, Vec<u8>)>,
    /// A job whose delete was sent but not answered.
    in_flight: Option<u64>,
}

/// Reserves jobs from tube `work` and deletes them until the server dies.
fn worker(addr: std::net::SocketAddr, ready: Arc<Barrier>) -> Work {
    let mut conn = server::Conn::connect(addr);
    conn.expect("watch work", "WATCHING 2");
    conn.expect("ignore default", "WATCHING 1");
    ready.wait();
    let mut work = Work {
        deleted: Vec::new(),
        in_flight: None,
    };
    loop {
        if conn.send(b"reserve-with-timeout 1\r\n").is_err() {
            return work;
        }
        let (id, body) = match conn.try_read_reply() {
            Ok(Reply::Line {
                line,
                body: Some(body),
            }) if line.starts_with("RESERVED ") => {
                (line.split(' ').nth(1).unwrap().parse().unwrap(), body)
            }
            Ok(Reply::Line { line, .. }) if line == "TIMED_OUT" => continue,
            Ok(Reply::Eof) | Err(_) => return work,
            Ok(other) => panic!("worker: reserve answered {other:?}"),
        };
        work.in_flight = Some(id);
        if conn.send(format!("delete {id}\r\n").as_bytes()).is_err() {
            return work;
        }
        match conn.try_read_reply() {
            Ok(Reply::Line { line, .. }) if line == "DELETED" => {
                work.deleted.push((id, body));
                work.in_flight = None;
            }
            Ok(Reply::Eof) | Err(_) => return work,
            Ok(other) => panic!("worker: delete {id} answered {other:?}"),
        }
    }
}

#[test]
fn sigkill_during_sync_puts_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Every job a client saw INSERTED for and never saw DELETED for.
    let mut live: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    for round in 0..ROUNDS {
        let mut server = start(&store);
        let mut admin = server.connect();

        // Everything acknowledged before is still there.
        check_present(&mut admin, &live, &deleted, round);

        // Jobs reserved by a client that is then killed with the server.
        admin.expect("use held", "USING held");
        let mut held_ids = BTreeSet::new();
        for n in 0..HELD {
            let body = format!("held-r{round}-{n}").into_bytes();
            let id = admin.put(0, 0, HELD_TTR_SECS, &body);
            live.insert(id, body);
            held_ids.insert(id);
        }
        let mut holder = server.connect();
        holder.expect("watch held", "WATCHING 2");
        holder.expect("ignore default", "WATCHING 1");
        for _ in 0..HELD {
            let (id, _) = holder.reserve(0);
            assert!(held_ids.contains(&id), "reserved {id}, not a held job");
        }

        // Delete a few of the jobs from earlier rounds: DELETED is durable.
        admin.expect("watch work", "WATCHING 2");
        let mut removed = 0;
        while removed < 10 {
            let reply = admin.cmd("reserve-with-timeout 0");
            if reply.line() == "TIMED_OUT" {
                break;
            }
            let Reply::Line { line, body } = reply else {
                panic!("reserve: server closed the connection")
            };
            let id: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(!deleted.contains(&id), "deleted job {id} is back");
            match live.get(&id) {
                Some(put) => assert_eq!(Some(put), body.as_ref(), "job {id} has the wrong body"),
                // A put whose INSERTED was not read before a kill, or a
                // delete whose DELETED was not: either outcome is right.
                None => assert!(
                    body.as_ref().is_some_and(|b| b.starts_with(b"r")),
                    "job {id} is none of this test's: {body:?}"
                ),
            }
            admin.expect(&format!("delete {id}"), "DELETED");
            live.remove(&id);
            deleted.insert(id);
            removed += 1;
        }
        // Fewer than 10 only when no acknowledged job is left to reserve.
        let reservable = live.keys().filter(|id| !held_ids.contains(id)).count();
        assert!(
            removed == 10 || reservable == 0,
            "round {round}: reserve found nothing though {reservable} jobs are live"
        );

        // Several clients put, and one reserves and deletes, until the
        // server is killed.
        let ready = Arc::new(Barrier::new(PUTTERS + 2));
        let putters: Vec<_> = (0..PUTTERS)
            .map(|client| {
                let (addr, ready) = (server.addr, Arc::clone(&ready));
                std::thread::spawn(move || putter(addr, round, client, ready))
            })
            .collect();
        let worker = {
            let (addr, ready) = (server.addr, Arc::clone(&ready));
            std::thread::spawn(move || worker(addr, ready))
        };
        ready.wait();
        std::thread::sleep(PUT_WINDOW);
        server.assert_running();
        let status = server.kill9();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        let mut acknowledged = 0;
        for putter in putters {
            for (id, body) in putter.join().unwrap() {
                assert!(
                    live.insert(id, body).is_none() && !deleted.contains(&id),
                    "round {round}: id {id} handed out twice"
                );
                acknowledged += 1;
            }
        }
        assert!(
            acknowledged >= PUTTERS,
            "round {round}: only {acknowledged} puts in {PUT_WINDOW:?}"
        );
        let work = worker.join().unwrap();
        for (id, body) in &work.deleted {
            // A job may be reserved before its putter read INSERTED.
            if let Some(put) = live.remove(id) {
                assert_eq!(
                    &put, body,
                    "round {round}: job {id} reserved with another body"
                );
            }
            deleted.insert(*id);
        }
        if let Some(id) = work.in_flight {
            // Its DELETED was not read: it may or may not be gone.
            live.remove(&id);
        }
        println!(
            "round {round}: {acknowledged} puts and {} deletes acknowledged before the kill",
            work.deleted.len()
        );
        drop((admin, holder));

        // After the restart the held jobs come back to be reserved again.
        let server = start(&store);
        let mut conn = server.connect();
        // docs/beanstalkd-compat.md: jobs reserved at a crash are ready again.
        for id in &held_ids {
            let stats = conn.stats(&format!("stats-job {id}"));
            assert!(
                stats.contains(&("state".to_owned(), "ready".to_owned())),
                "round {round}: held job {id} after the restart: {stats:?}"
            );
        }
        check_present(&mut conn, &live, &deleted, round + 1);
        conn.expect("watch held", "WATCHING 2");
        conn.expect("ignore default", "WATCHING 1");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut back = BTreeSet::new();
        while back != held_ids {
            assert!(
                Instant::now() < deadline,
                "round {round}: reserved-but-not-deleted jobs {:?} did not come back",
                held_ids.difference(&back).collect::<Vec<_>>()
            );
            let reply = conn.cmd("reserve-with-timeout 1");
            match reply.line() {
                "TIMED_OUT" | "DEADLINE_SOON" => continue,
                _ => {}
            }
            let Reply::Line { line, body } = &reply else {
                panic!("reserve: server closed the connection")
            };
            let id: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(
                held_ids.contains(&id),
                "reserved {id} from tube held: {line}"
            );
            assert_eq!(live.get(&id), body.as_ref());
            // Deleting is an acknowledgement; the next round checks it.
            conn.expect(&format!("delete {id}"), "DELETED");
            live.remove(&id);
            deleted.insert(id);
            back.insert(id);
        }
        drop(conn);
        assert_eq!(
            server.terminate().code(),
            Some(0),
            "clean shutdown after round {round}"
        );
    }
    // A last restart: the deletes of the last round held too.
    let server = start(&store);
    let mut conn = server.connect();
    check_present(&mut conn, &live, &deleted, ROUNDS + 1);
}

/// Every job in `live` can be peeked with its body; none in `deleted` can.
fn check_present(
    conn: &mut server::Conn,
    live: &BTreeMap<u64, Vec<u8>>,
    deleted: &BTreeSet<u64>,
    round: usize,
) {
    for (id, body) in live {
        let reply = conn.cmd(&format!("peek {id}"));
        match &reply {
            Reply::Line {
                line,
                body: Some(got),
            } if *line == format!("FOUND {id} {}", body.len()) => {
                assert_eq!(got, body, "restart {round}: job {id} has the wrong body");
            }
            _ => panic!(
                "restart {round}: acknowledged job {id} ({:?}) is missing: {reply:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
    for id in deleted {
        assert_eq!(
            conn.cmd(&format!("peek {id}")).line(),
            "NOT_FOUND",
            "restart {round}: deleted job {id} is back"
        );
    }
}
