//! Running `millpond serve` (and real beanstalkd) as processes, and a small
//! beanstalkd-protocol client with a timeout on every read, so a server bug
//! fails a test instead of hanging it.
//!
//! Test files include it with `#[path = "common/server.rs"] mod server;`.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single read from a server may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server gets to print `listening on` or to exit.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `millpond serve` process. Killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on, from its `listening on <addr>` line.
    pub addr: SocketAddr,
    /// Its `metrics on <addr>` line, when `--metrics-addr` was given.
    pub metrics_addr: Option<SocketAddr>,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `millpond --store <store> serve --addr 127.0.0.1:0 <extra...>`
    /// and waits for its `listening on` line.
    pub fn start(store: &Path, extra: &[&str]) -> Server {
        let stderr_dir = tempfile::tempdir().unwrap();
        let stderr_path = stderr_dir.path().join("stderr");
        let stderr_file = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_millpond"))
            .arg("--store")
            .arg(store)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .expect("run the millpond binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on stdout.
                    continue;
                }
            }
        });
        let wants_metrics = extra.contains(&"--metrics-addr");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut metrics_addr = None;
        while addr.is_none() || (wants_metrics && metrics_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    panic!(
                        "millpond serve did not print `listening on <addr>` (exit {status}); stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(rest.trim().parse().expect("listening address"));
            } else if let Some(rest) = line.strip_prefix("metrics on ") {
                metrics_addr = Some(rest.trim().parse().expect("metrics address"));
            } else {
                panic!("unexpected stdout line from millpond serve: {line:?}");
            }
        }
        Server {
            child,
            addr: addr.unwrap(),
            metrics_addr,
            stderr_path,
            _stderr_dir: stderr_dir,
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Connects a client.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Panics (with stderr) if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "millpond serve exited: {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .expect("signal the server");
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit()
    }

    /// SIGKILL, the way a crash or power cut ends it, and reaps it.
    pub fn kill9(mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "millpond serve did not exit within {START_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Debian package's binary; override with `MILLPOND_BEANSTALKD`.
pub fn beanstalkd_path() -> PathBuf {
    std::env::var_os("MILLPOND_BEANSTALKD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/beanstalkd"))
}

/// A running real beanstalkd (in memory, no binlog). Killed when dropped.
pub struct Beanstalkd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Beanstalkd {
    /// Starts `beanstalkd -l 127.0.0.1 -p <free port> <extra...>` and waits
    /// until it listens (seen in /proc, so no connection is counted). Fails
    /// (does not skip) when beanstalkd is not installed.
    pub fn start(extra: &[&str]) -> Beanstalkd {
        let path = beanstalkd_path();
        assert!(
            path.exists(),
            "{} not found: the differential tests need real beanstalkd 1.12 \
             (Debian: `sudo apt-get install -y beanstalkd`; .ci/run installs it), \
             or set MILLPOND_BEANSTALKD to its path",
            path.display()
        );
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(&path)
                .args(["-l", "127.0.0.1", "-p", &port.to_string()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(_status) = child.try_wait().unwrap() {
                    // Most likely someone took the port meanwhile: try another.
                    break;
                }
                if listening(child.id(), port) {
                    return Beanstalkd { child, addr };
                }
                assert!(Instant::now() < deadline, "beanstalkd did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("beanstalkd did not start on any of 5 free ports");
    }

    /// Connects a client.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .expect("signal beanstalkd");
    }
}

impl Drop for Beanstalkd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether some socket listens on 127.0.0.1:`port`, from /proc/net/tcp
/// (without connecting, which a server would count as a client).
/// Whether process `pid` listens on `127.0.0.1:port`: the listening
/// socket's inode (from /proc/net/tcp) is one of its file descriptors. Not
/// only that someone listens: two tests may pick the same free port, and
/// the one whose server lost the race must not talk to the other's.
fn listening(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let Some(inode) = table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        // local_address, ..., st (0A is LISTEN), ..., inode
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))
            .flatten()
    }) else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == inode.as_str())
    })
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One reply of the protocol: its line (without CRLF) and, for `OK`,
/// `RESERVED` and `FOUND`, its body (without the trailing CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A reply line and the body that followed it, if any.
    Line { line: String, body: Option<Vec<u8>> },
    /// The server closed the connection (or reset it).
    Eof,
}

impl Reply {
    /// The reply line, or `<EOF>`.
    pub fn line(&self) -> &str {
        match self {
            Reply::Line { line, .. } => line,
            Reply::Eof => "<EOF>",
        }
    }
}

/// A connection to a beanstalkd-protocol server.
pub struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// Longest reply line accepted from a server.
const REPLY_LINE_MAX: usize = 64 * 1024;

/// Longest body accepted from a server.
const REPLY_BODY_MAX: usize = 64 * 1024 * 1024;

impl Conn {
    /// Connects, with [`READ_TIMEOUT`] on every read.
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    /// A second handle on the same connection (to write from another
    /// thread while this one reads).
    pub fn try_clone(&self) -> Conn {
        let stream = self.stream.try_clone().unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    /// Writes all of `bytes`; `Err` if the server closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sets the read timeout (`None` waits forever: never use it in tests).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Closes the write half, as a client that is done sending.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Reads one reply. Panics on a timeout or on a reply that breaks the
    /// protocol's framing (no CRLF, a body of the wrong length).
    #[track_caller]
    pub fn read_reply(&mut self) -> Reply {
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Reads one reply; `Err` on a timeout or a framing error.
    pub fn try_read_reply(&mut self) -> Result<Reply, String> {
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            match self.reader.read(&mut byte) {
                Ok(0) => {
                    return if line.is_empty() {
                        Ok(Reply::Eof)
                    } else {
                        Err(format!(
                            "connection closed inside a reply line: {:?}",
                            String::from_utf8_lossy(&line)
                        ))
                    };
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset && line.is_empty() => {
                    return Ok(Reply::Eof);
                }
                Err(e) => {
                    return Err(format!("{e} (after {:?})", String::from_utf8_lossy(&line)));
                }
            }
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
                break;
            }
            if line.len() > REPLY_LINE_MAX {
                return Err(format!("reply line longer than {REPLY_LINE_MAX} bytes"));
            }
        }
        let line = String::from_utf8(line).map_err(|e| format!("reply line not UTF-8: {e}"))?;
        if line.contains('\n') || line.contains('\r') {
            return Err(format!("reply line with a stray CR or LF: {line:?}"));
        }
        let words: Vec<&str> = line.split(' ').collect();
        let size = match words.as_slice() {
            ["OK", n] | ["RESERVED", _, n] | ["FOUND", _, n] => Some(
                n.parse::<usize>()
                    .map_err(|e| format!("body length in {line:?}: {e}"))?,
            ),
            _ => None,
        };
        let body = match size {
            None => None,
            Some(n) if n > REPLY_BODY_MAX => return Err(format!("body too long: {line:?}")),
            Some(n) => {
                let mut body = vec![0u8; n + 2];
                self.reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("body of {line:?}: {e}"))?;
                if !body.ends_with(b"\r\n") {
                    return Err(format!(
                        "body of {line:?} does not end in CRLF: {:?}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                body.truncate(n);
                Some(body)
            }
        };
        Ok(Reply::Line { line, body })
    }

    /// Sends one command line (CRLF added) and reads its reply line.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("send {line:?}: {e}"));
        self.read_reply()
    }

    /// Sends a command and expects exactly the reply line `want`.
    #[track_caller]
    pub fn expect(&mut self, line: &str, want: &str) {
        let got = self.cmd(line);
        assert_eq!(got.line(), want, "reply to {line:?}");
    }

    /// `put` and expects `INSERTED <id>`; returns the id.
    #[track_caller]
    pub fn put(&mut self, pri: u32, delay: u32, ttr: u32, body: &[u8]) -> u64 {
        let mut bytes = format!("put {pri} {delay} {ttr} {}\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).expect("send put");
        let reply = self.read_reply();
        reply
            .line()
            .strip_prefix("INSERTED ")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("put: {reply:?}"))
    }

    /// `put` that may fail because the server went away: `None` then.
    pub fn try_put(&mut self, pri: u32, delay: u32, ttr: u32, body: &[u8]) -> Option<u64> {
        let mut bytes = format!("put {pri} {delay} {ttr} {}\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).ok()?;
        match self.try_read_reply() {
            Ok(Reply::Line { line, .. }) => match line.strip_prefix("INSERTED ") {
                Some(id) => Some(id.parse().expect("id in INSERTED")),
                None => panic!("put: {line:?}"),
            },
            _ => None,
        }
    }

    /// Sends a command that answers with a job (`RESERVED`/`FOUND`) and
    /// returns `(id, body)`; panics with the reply otherwise.
    #[track_caller]
    pub fn job(&mut self, line: &str, word: &str) -> (u64, Vec<u8>) {
        let reply = self.cmd(line);
        if let Reply::Line {
            line: got,
            body: Some(body),
        } = &reply
        {
            let words: Vec<&str> = got.split(' ').collect();
            if words.len() == 3 && words[0] == word {
                return (words[1].parse().unwrap(), body.clone());
            }
        }
        panic!("{line:?}: expected {word} <id> <bytes>, got {reply:?}");
    }

    /// `reserve-with-timeout <secs>`, expecting a job.
    #[track_caller]
    pub fn reserve(&mut self, secs: u32) -> (u64, Vec<u8>) {
        self.job(&format!("reserve-with-timeout {secs}"), "RESERVED")
    }

    /// A YAML dictionary reply (`stats*`) as key/value pairs, in order.
    #[track_caller]
    pub fn stats(&mut self, line: &str) -> Vec<(String, String)> {
        let reply = self.cmd(line);
        let Reply::Line {
            body: Some(body), ..
        } = &reply
        else {
            panic!("{line:?}: {reply:?}");
        };
        parse_yaml_dict(body).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// One value of a `stats*` reply, parsed as a number.
    #[track_caller]
    pub fn stat(&mut self, line: &str, key: &str) -> u64 {
        let stats = self.stats(line);
        let value = stats
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{line:?}: no {key} in {stats:?}"));
        value.1.parse().unwrap()
    }
}

/// Parses a `stats*` body: `---\n` then `key: value\n` lines.
pub fn parse_yaml_dict(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("stats not UTF-8: {e}"))?;
    let rest = text
        .strip_prefix("---\n")
        .ok_or_else(|| format!("stats do not start with ---: {text:?}"))?;
    rest.lines()
        .map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("stats line {l:?} is not `key: value`"))
        })
        .collect()
}
