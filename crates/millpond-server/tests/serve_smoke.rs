//! End-to-end smoke tests of the server library over real sockets and a
//! real store: group-committed puts, ordered pipelined replies, a reserve
//! woken by a put from another connection, reservations returned when a
//! connection drops, and jobs surviving a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use millpond::{Options, Store};
use millpond_server::{Config, run_until};

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let store = Store::open(dir, Options::default()).unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            addr: "127.0.0.1:0".into(),
            ..Config::default()
        };
        let thread = std::thread::spawn(move || {
            let stop = async move {
                let _ = stop_rx.await;
            };
            run_until(store, config, |a, _| ready_tx.send(a).unwrap(), stop).unwrap();
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn connect(&self) -> Client {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap();
    }
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "{l:?}");
        l.truncate(l.len() - 2);
        l
    }

    /// Reads a `WORD id bytes` reply and its body.
    fn job(&mut self, word: &str) -> (u64, Vec<u8>) {
        let l = self.line();
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 3, "{l}");
        assert_eq!(parts[0], word, "{l}");
        let n: usize = parts[2].parse().unwrap();
        let mut body = vec![0; n + 2];
        self.r.read_exact(&mut body).unwrap();
        assert_eq!(&body[n..], b"\r\n");
        body.truncate(n);
        (parts[1].parse().unwrap(), body)
    }
}

#[test]
fn pipelined_puts_are_answered_in_order_with_increasing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.connect();
    let mut burst = Vec::new();
    for i in 0..200 {
        let body = format!("job-{i}");
        burst.extend_from_slice(format!("put 0 0 30 {}\r\n{body}\r\n", body.len()).as_bytes());
    }
    burst.extend_from_slice(b"stats-tube default\r\n");
    c.send(&burst);
    for i in 0..200u64 {
        assert_eq!(c.line(), format!("INSERTED {}", i + 1));
    }
    let head = c.line();
    assert!(head.starts_with("OK "), "{head}");
    let (id, body) = {
        c.send(b"reserve\r\n");
        // the stats body is still unread; read it first
        let n: usize = head[3..].parse().unwrap();
        let mut yaml = vec![0; n + 2];
        c.r.read_exact(&mut yaml).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        assert!(yaml.contains("current-jobs-ready: 200\n"), "{yaml}");
        c.job("RESERVED")
    };
    assert_eq!((id, body.as_slice()), (1, &b"job-0"[..]));
    c.send(b"delete 1\r\ndelete 1\r\n");
    assert_eq!(c.line(), "DELETED");
    assert_eq!(c.line(), "NOT_FOUND");
    server.stop();
}

#[test]
fn reserve_wakes_on_a_put_from_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut worker = server.connect();
    worker.send(b"watch jobs\r\nignore default\r\nreserve-with-timeout 10\r\n");
    assert_eq!(worker.line(), "WATCHING 2");
    assert_eq!(worker.line(), "WATCHING 1");
    std::thread::sleep(Duration::from_millis(200));
    let mut producer = server.connect();
    producer.send(b"use jobs\r\nput 5 0 30 3\r\nabc\r\n");
    assert_eq!(producer.line(), "USING jobs");
    let inserted = producer.line();
    let id: u64 = inserted.strip_prefix("INSERTED ").unwrap().parse().unwrap();
    assert_eq!(millpond_server::split_job_id(id), (1, 1));
    assert_eq!(worker.job("RESERVED"), (id, b"abc".to_vec()));
    // Only the reserving connection may delete it while reserved.
    producer.send(format!("delete {id}\r\n").as_bytes());
    assert_eq!(producer.line(), "NOT_FOUND");
    // Dropping the worker gives the job back.
    drop(worker);
    producer.send(b"watch jobs\r\nreserve-with-timeout 5\r\n");
    assert_eq!(producer.line(), "WATCHING 2");
    assert_eq!(producer.job("RESERVED"), (id, b"abc".to_vec()));
    producer.send(b"reserve-with-timeout 0\r\n");
    assert_eq!(producer.line(), "TIMED_OUT");
    server.stop();
}

#[test]
fn jobs_and_tubes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.connect();
    c.send(b"use a+b\r\nput 9 0 60 2\r\nhi\r\nput 1 3600 60 5\r\nlater\r\n");
    assert_eq!(c.line(), "USING a+b");
    assert_eq!(c.line(), format!("INSERTED {}", (1u64 << 40) | 1));
    assert_eq!(c.line(), format!("INSERTED {}", (1u64 << 40) | 2));
    drop(c);
    server.stop();
    let server = Server::start(dir.path());
    let mut c = server.connect();
    c.send(format!("peek {}\r\nuse a+b\r\npeek-delayed\r\n", (1u64 << 40) | 1).as_bytes());
    assert_eq!(c.job("FOUND"), ((1 << 40) | 1, b"hi".to_vec()));
    assert_eq!(c.line(), "USING a+b");
    assert_eq!(c.job("FOUND"), ((1 << 40) | 2, b"later".to_vec()));
    server.stop();
}

#[test]
fn concurrent_producers_and_workers_deliver_every_job_once() {
    const PRODUCERS: u64 = 6;
    const PER_PRODUCER: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                c.send(b"use work\r\n");
                assert_eq!(c.line(), "USING work");
                let mut ids = Vec::new();
                for i in 0..PER_PRODUCER {
                    let body = format!("{p}:{i}");
                    c.send(format!("put {} 0 60 {}\r\n{body}\r\n", i % 3, body.len()).as_bytes());
                    let l = c.line();
                    ids.push(l.strip_prefix("INSERTED ").unwrap().parse::<u64>().unwrap());
                }
                ids
            })
        })
        .collect();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                c.send(b"watch work\r\nignore default\r\n");
                assert_eq!(c.line(), "WATCHING 2");
                assert_eq!(c.line(), "WATCHING 1");
                let mut got = Vec::new();
                loop {
                    c.send(b"reserve-with-timeout 2\r\n");
                    let l = c.line();
                    if l == "TIMED_OUT" {
                        return got;
                    }
                    let parts: Vec<&str> = l.split(' ').collect();
                    assert_eq!(parts[0], "RESERVED", "{l}");
                    let n: usize = parts[2].parse().unwrap();
                    let mut body = vec![0; n + 2];
                    c.r.read_exact(&mut body).unwrap();
                    body.truncate(n);
                    let id: u64 = parts[1].parse().unwrap();
                    c.send(format!("delete {id}\r\n").as_bytes());
                    assert_eq!(c.line(), "DELETED", "job {id}");
                    got.push((id, String::from_utf8(body).unwrap()));
                }
            })
        })
        .collect();
    let mut inserted = std::collections::BTreeSet::new();
    for p in producers {
        for id in p.join().unwrap() {
            assert!(inserted.insert(id), "id {id} inserted twice");
        }
    }
    let mut delivered = std::collections::BTreeMap::new();
    for w in workers {
        for (id, body) in w.join().unwrap() {
            assert!(
                delivered.insert(id, body).is_none(),
                "job {id} delivered twice"
            );
        }
    }
    assert_eq!(inserted.len() as u64, PRODUCERS * PER_PRODUCER);
    assert_eq!(
        delivered
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        inserted
    );
    let mut bodies: Vec<&String> = delivered.values().collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len() as u64, PRODUCERS * PER_PRODUCER);
    let mut c = server.connect();
    // Empty and unused, the tube is gone (as in beanstalkd) until used.
    // The server learns that the producers and workers left when it reads
    // their connections' end, which may come after this connection's
    // first command: ask until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        c.send(b"stats-tube work\r\n");
        let l = c.line();
        if l == "NOT_FOUND" {
            break;
        }
        let n: usize = l
            .strip_prefix("OK ")
            .expect("stats-tube reply")
            .parse()
            .unwrap();
        let mut yaml = vec![0; n + 2];
        c.r.read_exact(&mut yaml).unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the tube is still live 10 s after every client left"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.send(b"use work\r\nstats-tube work\r\n");
    assert_eq!(c.line(), "USING work");
    let head = c.line();
    let n: usize = head.strip_prefix("OK ").unwrap().parse().unwrap();
    let mut yaml = vec![0; n + 2];
    c.r.read_exact(&mut yaml).unwrap();
    let yaml = String::from_utf8(yaml).unwrap();
    assert!(yaml.contains("current-jobs-ready: 0\n"), "{yaml}");
    assert!(yaml.contains("current-jobs-reserved: 0\n"), "{yaml}");
    assert!(
        yaml.contains(&format!("cmd-delete: {}\n", PRODUCERS * PER_PRODUCER)),
        "{yaml}"
    );
    server.stop();
}
