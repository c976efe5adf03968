//! The load generator (`millpond bench --server`) against a real
//! `millpond serve` process: the counts it reports match what the server
//! holds afterwards, and a server that speaks another protocol gets a
//! clear error, not a hang or a panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `millpond serve` process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(store: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_millpond"))
            .arg("--store")
            .arg(store)
            .args(["serve", "--addr", "127.0.0.1:0", "--durability", "sync"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the millpond binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("millpond serve prints `listening on <addr>`");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {line:?}"))
            .parse()
            .unwrap();
        Server { child, addr }
    }
}

/// A beanstalkd-protocol connection that uses a tube, so the server keeps
/// the tube (and its counters) while the test looks at it: beanstalkd
/// drops a tube nobody uses, watches or has jobs in.
struct Observer {
    stream: TcpStream,
    tube: String,
}

impl Observer {
    fn new(server: &Server, tube: &str) -> Observer {
        let stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut observer = Observer {
            stream,
            tube: tube.to_owned(),
        };
        assert_eq!(
            observer.command(&format!("use {tube}")),
            format!("USING {tube}\r\n")
        );
        observer
    }

    /// One command and its reply, read whole (the reply line and, for
    /// `OK <n>`, its body).
    fn command(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            self.stream.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
        }
        let head = String::from_utf8(reply).unwrap();
        match head.strip_prefix("OK ") {
            Some(n) => {
                let mut body = vec![0u8; n.trim_end().parse::<usize>().unwrap() + 2];
                self.stream.read_exact(&mut body).unwrap();
                head + &String::from_utf8(body).unwrap()
            }
            None => head,
        }
    }

    /// A field of `stats-tube` of the observed tube.
    fn stat(&mut self, field: &str) -> u64 {
        let reply = self.command(&format!("stats-tube {}", self.tube));
        let prefix = format!("{field}: ");
        reply
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {field} in {reply:?}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(["bench", "--server", &server.addr.to_string(), "--json"])
        .args(["--server-pid", &server.child.id().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn bench_json(server: &Server, args: &[&str]) -> Value {
    let out = bench(server, args);
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn puts_then_reserve_deletes_leave_the_tube_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"));
    let mut observer = Observer::new(&server, "loadgen");
    let tube = ["--queue", "loadgen"];

    let put = bench_json(
        &server,
        &[
            &tube[..],
            &["--clients", "4", "--pipeline", "8", "--count", "1000"],
        ]
        .concat(),
    );
    assert_eq!(put["ops"], 1000, "{put}");
    assert_eq!(put["workload"], "put");
    assert_eq!(put["empty_reserves"], 0);
    assert_eq!(put["latency_us"]["samples"], 1000, "{put}");
    assert!(put["server_cpu"]["cpu_s"].as_f64().is_some(), "{put}");
    assert_eq!(observer.stat("current-jobs-ready"), 1000);
    assert_eq!(observer.stat("total-jobs"), 1000);

    // Ask for more than there is: it stops when the tube runs dry.
    let take = bench_json(
        &server,
        &[
            &tube[..],
            &[
                "--workload",
                "reserve-delete",
                "--clients",
                "4",
                "--pipeline",
                "8",
                "--count",
                "5000",
            ],
        ]
        .concat(),
    );
    assert_eq!(take["ops"], 1000, "{take}");
    assert!(take["empty_reserves"].as_u64().unwrap() > 0, "{take}");
    assert_eq!(observer.stat("current-jobs-ready"), 0);
    assert_eq!(observer.stat("current-jobs-reserved"), 0);
    assert_eq!(observer.stat("total-jobs"), 1000);

    // Strict request/response: each cycle puts, reserves and deletes one.
    let cycle = bench_json(
        &server,
        &[
            &tube[..],
            &["--workload", "cycle", "--clients", "2", "--count", "200"],
        ]
        .concat(),
    );
    assert_eq!(cycle["ops"], 200, "{cycle}");
    assert_eq!(cycle["pipeline"], 1);
    assert_eq!(observer.stat("current-jobs-ready"), 0);
    assert_eq!(observer.stat("total-jobs"), 1200);
}

#[test]
fn a_server_speaking_another_protocol_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"));
    let out = bench(&server, &["--protocol", "redis-list", "--count", "10"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client 0") && stderr.contains("not one of + - : $ *"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
