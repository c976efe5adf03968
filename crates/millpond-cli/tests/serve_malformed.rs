//! Malformed input to `millpond serve`: seeded random bytes and command-like
//! garbage, overlong lines, truncated bodies, stray CR/LF and bad numbers.
//! The server answers with the protocol's errors or closes the connection,
//! never crashes, and keeps serving a well-behaved client that runs
//! put/reserve/delete cycles at the same time and afterwards. Also: the
//! reservations of a connection that goes away are released.

#[path = "common/server.rs"]
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use server::{Conn, Reply, Server};

/// Reply words a server may send; `INTERNAL_ERROR` is not among them (it
/// would mean garbage input found a server bug).
const REPLY_WORDS: &[&str] = &[
    "INSERTED",
    "BURIED",
    "EXPECTED_CRLF",
    "JOB_TOO_BIG",
    "DRAINING",
    "USING",
    "RESERVED",
    "DEADLINE_SOON",
    "TIMED_OUT",
    "DELETED",
    "NOT_FOUND",
    "RELEASED",
    "TOUCHED",
    "WATCHING",
    "NOT_IGNORED",
    "FOUND",
    "KICKED",
    "OK",
    "PAUSED",
    "OUT_OF_MEMORY",
    "BAD_FORMAT",
    "UNKNOWN_COMMAND",
];

/// SplitMix64: a small seeded generator, so every run sends the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const COMMANDS: &[&str] = &[
    "put",
    "use",
    "reserve-with-timeout",
    "reserve-job",
    "delete",
    "release",
    "bury",
    "touch",
    "watch",
    "ignore",
    "peek",
    "peek-ready",
    "peek-delayed",
    "peek-buried",
    "kick",
    "kick-job",
    "stats-job",
    "stats-tube",
    "stats",
    "list-tubes",
    "list-tube-used",
    "list-tubes-watched",
    "pause-tube",
    "quit",
    "reserve",
    "PUT",
    "",
    "put-",
];

/// Arguments; the numbers stay clear of the ids of the well-behaved
/// client's tube (its tube is not the first, so its ids are >= 2^40).
const ARGS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "60",
    "1024",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "-1",
    "+1",
    "0x10",
    "1.5",
    "x",
    "default",
    "junk",
    "-tube",
    "a/b",
    "..",
    "tube(1);$",
    "",
];

const ENDS: &[&str] = &[
    "\r\n", "\r\n", "\r\n", "\n", "\r", "", " \r\n", "\r\r\n", "\n\r",
];

/// One connection's worth of garbage for `seed`: random bytes, or
/// command-like lines with random arguments, bodies and line ends.
fn garbage(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    if seed.is_multiple_of(4) {
        let len = rng.below(4096);
        for _ in 0..len {
            out.push(rng.next() as u8);
        }
        return out;
    }
    for _ in 0..rng.below(40) + 1 {
        if rng.below(3) == 0 {
            well_formed(&mut rng, &mut out);
            // Sometimes damage one byte of it.
            if rng.below(4) == 0 && !out.is_empty() {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
            continue;
        }
        out.extend_from_slice(rng.pick(COMMANDS).as_bytes());
        for _ in 0..rng.below(6) {
            out.extend_from_slice(if rng.below(8) == 0 { b"  " } else { b" " });
            out.extend_from_slice(rng.pick(ARGS).as_bytes());
        }
        out.extend_from_slice(rng.pick(ENDS).as_bytes());
        match rng.below(6) {
            0 => {
                for _ in 0..rng.below(64) {
                    out.push(rng.next() as u8);
                }
            }
            1 => out.extend_from_slice(b"body\r\n"),
            _ => {}
        }
    }
    out
}

/// Appends one well-formed command; a `put` body is sometimes of the wrong
/// length, or too big.
fn well_formed(rng: &mut Rng, out: &mut Vec<u8>) {
    let tube = rng.pick(&["default", "junk", "a/b", "tube(1);$"]);
    let small = rng.below(8);
    let command = match rng.below(12) {
        0..=3 => {
            let size = rng.pick(&["0", "1", "5", "100", "65536", "70000"]);
            let size: usize = size.parse().unwrap();
            let sent = match rng.below(4) {
                0 => size + 1,
                1 => size.saturating_sub(1),
                _ => size,
            };
            let pri = rng.next() as u32;
            let delay = rng.below(3);
            out.extend_from_slice(
                format!("put {pri} {delay} {} {size}\r\n", rng.below(3)).as_bytes(),
            );
            out.extend(std::iter::repeat_n(b'b', sent));
            "\r\n".to_owned()
        }
        4 => "reserve-with-timeout 0\r\n".to_owned(),
        5 => format!("use {tube}\r\n"),
        6 => format!("watch {tube}\r\n"),
        7 => format!("delete {small}\r\n"),
        8 => format!("kick {small}\r\n"),
        9 => format!("stats-tube {tube}\r\n"),
        10 => format!("peek {small}\r\n"),
        _ => rng
            .pick(&[
                "stats\r\n",
                "list-tubes\r\n",
                "peek-ready\r\n",
                "ignore default\r\n",
            ])
            .to_owned(),
    };
    out.extend_from_slice(command.as_bytes());
}

/// A client that runs put/reserve/delete cycles in its own tube until told
/// to stop, checking every reply and counting the cycles it completed.
fn well_behaved(addr: SocketAddr, stop: Arc<AtomicBool>, cycles: Arc<AtomicU64>) {
    let mut conn = Conn::connect(addr);
    cycle_setup(&mut conn);
    while !stop.load(Ordering::Relaxed) {
        cycle(&mut conn, cycles.load(Ordering::Relaxed));
        cycles.fetch_add(1, Ordering::Relaxed);
    }
}

fn cycle_setup(conn: &mut Conn) {
    conn.expect("use good", "USING good");
    conn.expect("watch good", "WATCHING 2");
    conn.expect("ignore default", "WATCHING 1");
}

#[track_caller]
fn cycle(conn: &mut Conn, n: u64) {
    let body = format!("good job {n}").into_bytes();
    let id = conn.put(0, 0, 60, &body);
    let (got, got_body) = conn.reserve(5);
    assert_eq!(
        (got, &got_body),
        (id, &body),
        "well-behaved client cycle {n}"
    );
    conn.expect(&format!("delete {id}"), "DELETED");
}

/// Starts a server with the well-behaved client running beside the test.
struct Fixture {
    server: Server,
    stop: Arc<AtomicBool>,
    cycles: Arc<AtomicU64>,
    good: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(
            &dir.path().join("store"),
            &["--max-job-size", "65536", "--durability", "buffered"],
        );
        // Make the default tube first, so `good` is not the first tube.
        server.connect().expect("list-tube-used", "USING default");
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicU64::new(0));
        let good = {
            let (addr, stop, cycles) = (server.addr, Arc::clone(&stop), Arc::clone(&cycles));
            std::thread::spawn(move || well_behaved(addr, stop, cycles))
        };
        Fixture {
            server,
            stop,
            cycles,
            good: Some(good),
            _dir: dir,
        }
    }

    /// Lets the well-behaved client finish a few more cycles, stops it,
    /// checks the server is alive, and runs one more cycle on a new
    /// connection.
    fn finish(mut self) {
        let target = self.cycles.load(Ordering::Relaxed) + 3;
        let deadline = Instant::now() + server::READ_TIMEOUT;
        while self.cycles.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the well-behaved client stopped making progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.good
            .take()
            .unwrap()
            .join()
            .expect("well-behaved client");
        self.server.assert_running();
        let mut conn = self.server.connect();
        cycle_setup(&mut conn);
        cycle(&mut conn, u64::MAX);
    }
}

/// Reads replies until the server closes the connection; every reply must
/// be a protocol reply. Returns the reply lines.
#[track_caller]
fn drain(conn: &mut Conn, what: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match conn.try_read_reply() {
            Ok(Reply::Eof) => return lines,
            Ok(Reply::Line { line, .. }) => {
                let word = line.split(' ').next().unwrap_or("");
                assert!(
                    REPLY_WORDS.contains(&word),
                    "{what}: not a protocol reply: {line:?} (after {lines:?})"
                );
                lines.push(line);
            }
            Err(e) => panic!("{what}: {e} (after {lines:?}); the server must answer or close"),
        }
    }
}

#[test]
fn random_garbage_gets_protocol_errors_and_others_keep_working() {
    let fixture = Fixture::start();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for seed in 0..1000 {
        let bytes = garbage(seed);
        let mut conn = fixture.server.connect();
        // The server may close the connection before it has read it all.
        let _ = conn.send(&bytes);
        // Done sending: the server must answer what it has and then close
        // (also a connection waiting in `reserve` or for the rest of a body).
        conn.shutdown_write();
        for line in drain(&mut conn, &format!("seed {seed}")) {
            let word = line.split(' ').next().unwrap().to_owned();
            *seen.entry(word).or_default() += 1;
        }
    }
    println!("replies to the garbage: {seen:?}");
    // The garbage reaches past the parser's first checks.
    for word in [
        "BAD_FORMAT",
        "UNKNOWN_COMMAND",
        "EXPECTED_CRLF",
        "INSERTED",
        "USING",
        "WATCHING",
        "NOT_FOUND",
        "OK",
    ] {
        assert!(seen.contains_key(word), "no {word} among {seen:?}");
    }
    fixture.finish();
}

#[test]
fn overlong_line_gets_bad_format_or_close() {
    let fixture = Fixture::start();
    for (len, end) in [(300, "\r\n"), (70_000, "\r\n"), (4 << 20, "")] {
        let mut conn = fixture.server.connect();
        // Read while writing: a server that answers each chunk must not
        // deadlock against a test that is still sending.
        let mut writer = conn.try_clone();
        let line = [&vec![b'a'; len][..], end.as_bytes()].concat();
        let sender = std::thread::spawn(move || {
            let _ = writer.send(&line);
            writer.shutdown_write();
        });
        let lines = drain(&mut conn, &format!("{len}-byte line"));
        sender.join().unwrap();
        assert!(
            lines
                .iter()
                .all(|l| l == "BAD_FORMAT" || l == "UNKNOWN_COMMAND"),
            "{len}-byte line: {lines:?}"
        );
        assert!(
            len < 1024 || lines.len() <= len / 64,
            "{len}-byte line: {} replies",
            lines.len()
        );
    }
    fixture.finish();
}

#[test]
fn truncated_body_then_disconnect_inserts_nothing() {
    let fixture = Fixture::start();
    let cases: &[&[u8]] = &[
        b"put 0 0 60 100\r\n",
        b"put 0 0 60 100\r\nonly half of the body",
        b"put 0 0 60 5\r\nhello",
        b"put 0 0 60 5\r\nhello\r",
        b"put 0 0 60 5",
        b"put 0 0 60 5\r",
    ];
    for case in cases {
        let mut conn = fixture.server.connect();
        conn.expect("use trunc", "USING trunc");
        conn.send(case).unwrap();
        drop(conn);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = fixture.server.connect();
    conn.expect("use trunc", "USING trunc");
    conn.expect("peek-ready", "NOT_FOUND");
    conn.expect("peek-delayed", "NOT_FOUND");
    conn.expect("peek-buried", "NOT_FOUND");
    fixture.finish();
}

#[test]
fn stray_cr_waits_for_the_line_limit_or_a_close() {
    let fixture = Fixture::start();
    // As in beanstalkd, a CR not followed by LF hides the rest of the line
    // (docs/beanstalkd-compat.md): the server may wait for more, but once
    // the line passes the 224-byte limit it answers BAD_FORMAT and serves
    // the next command, and a client that stops sending is closed.
    for line in [
        &b"list-tube-used\rx\r\n"[..],
        b"list-tube-used\r\r\n",
        b"frob\rx\r\n",
        b"\r\r\r\r\n",
        b"put 0 0 60 1\rx\r\n",
    ] {
        let what = String::from_utf8_lossy(line);
        let mut conn = fixture.server.connect();
        let padded = [line, &[b'y'; 300][..], b"\r\nlist-tube-used\r\n"].concat();
        conn.send(&padded).unwrap();
        let mut replies = Vec::new();
        loop {
            let reply = conn.read_reply();
            match reply.line() {
                "BAD_FORMAT" | "UNKNOWN_COMMAND" => replies.push(reply),
                "USING default" => break,
                _ => panic!("{what:?} then 300 bytes: {reply:?} after {replies:?}"),
            }
        }
        assert!(
            !replies.is_empty(),
            "{what:?}: the overlong line was not refused"
        );
        let mut conn = fixture.server.connect();
        conn.send(line).unwrap();
        conn.shutdown_write();
        assert_eq!(conn.read_reply(), Reply::Eof, "{what:?} then a half-close");
    }
    fixture.finish();
}

#[test]
fn bad_numbers_get_bad_format() {
    let fixture = Fixture::start();
    let mut conn = fixture.server.connect();
    let long_digits = "9".repeat(150);
    for line in [
        "put -1 0 60 1".to_owned(),
        "put 0 0 60 18446744073709551616".to_owned(),
        format!("put 0 0 60 {long_digits}"),
        format!("delete {long_digits}"),
        "peek -0".to_owned(),
        "release 1 -2 0".to_owned(),
        "bury 1 4294967296".to_owned(),
        "kick-job 1e3".to_owned(),
        "stats-job 0x10".to_owned(),
        "pause-tube default 18446744073709551616".to_owned(),
    ] {
        assert_eq!(conn.cmd(&line).line(), "BAD_FORMAT", "{line:?}");
    }
    fixture.finish();
}

#[test]
fn disconnect_releases_reservations() {
    let fixture = Fixture::start();
    let mut a = fixture.server.connect();
    a.expect("use orphans", "USING orphans");
    a.expect("watch orphans", "WATCHING 2");
    let first = a.put(0, 0, 600, b"first");
    let second = a.put(1, 0, 600, b"second");
    assert_eq!(a.reserve(0).0, first);
    assert_eq!(a.reserve(0).0, second);
    let mut b = fixture.server.connect();
    b.expect("watch orphans", "WATCHING 2");
    b.expect("reserve-with-timeout 0", "TIMED_OUT");
    // Waiting in reserve when the holder goes away.
    b.send(b"reserve-with-timeout 10\r\n").unwrap();
    drop(a);
    // Both come back long before their 600 s TTR (the waiting reserve
    // takes whichever the server gives back first).
    let woken = b.read_reply();
    let (woken_id, woken_body) = match &woken {
        Reply::Line {
            line,
            body: Some(body),
        } if line.starts_with("RESERVED ") => (
            line.split(' ').nth(1).unwrap().parse::<u64>().unwrap(),
            body.clone(),
        ),
        other => panic!("waiting reserve after the holder left: {other:?}"),
    };
    let other = b.reserve(5);
    let mut back = [(woken_id, woken_body), other];
    back.sort();
    assert_eq!(
        back,
        [(first, b"first".to_vec()), (second, b"second".to_vec())]
    );
    b.expect(&format!("delete {first}"), "DELETED");
    // A half-closed connection also gives its reservations back.
    let mut c = fixture.server.connect();
    c.expect("watch orphans", "WATCHING 2");
    c.expect("ignore default", "WATCHING 1");
    b.expect(&format!("release {second} 0 0"), "RELEASED");
    assert_eq!(c.reserve(0).0, second);
    c.shutdown_write();
    assert_eq!(c.read_reply(), Reply::Eof);
    assert_eq!(b.reserve(5).0, second);
    fixture.finish();
}
