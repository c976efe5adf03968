//! Differential test: the scripted sessions under `tests/sessions/` are sent
//! byte for byte to real beanstalkd 1.12 and to `millpond serve`, each
//! started fresh for every session; their replies must match after
//! normalising only what legitimately differs (see [`EXCEPTIONS`], listed
//! with reasons in `docs/beanstalkd-compat.md`).
//!
//! # Session format
//!
//! One step per line; blank lines and lines starting with `#` are skipped.
//!
//! - `@name`: later steps use connection `name` (opened on first use); the
//!   first connection is `a`.
//! - `> TEXT`: send TEXT followed by CRLF. `>| TEXT` sends TEXT without
//!   adding CRLF. In TEXT, `\r`, `\n`, `\t`, `\0`, `\\`, `\xHH` are escapes,
//!   `{{N*S}}` is S repeated N times, `$K` is the K-th distinct job id
//!   (1-based) seen in this server's replies, and `$$` is a `$`.
//! - `< LINE`: read one reply; its normalised line must be LINE on
//!   beanstalkd (so a session says what it tests), and millpond's reply
//!   (line and body, normalised) must equal beanstalkd's.
//! - `quiet`: no reply arrives within a short while (on beanstalkd; on
//!   millpond, a reply that does arrive is reported as a difference).
//! - `sleep MS`: wait.
//! - `close`: close the current connection.
//! - `signal USR1`: send the server SIGUSR1 (drain mode).
//!
//! Normalised lines show job ids as `$K` (by order of appearance) and the
//! body length of `OK` replies to `stats*` as `*` (their values differ in
//! width); the connection being closed by the server reads as `<EOF>`.
//!
//! Set `MILLPOND_SESSIONS_RECORD=1` to rewrite each session file with
//! beanstalkd's replies in its `<` lines (how they were first written;
//! review the diff).

#[path = "common/server.rs"]
mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use server::{Beanstalkd, Conn, Reply, Server};

/// Maximum job size both servers are started with (small, so `JOB_TOO_BIG`
/// is cheap to reach).
const MAX_JOB_SIZE: &str = "1024";

/// How a stats value may differ between the two servers.
#[derive(Debug, Clone, Copy)]
enum Allowed {
    /// Any value (it describes the process or build, not the protocol).
    Any,
    /// millpond reports 0 (it does not keep this figure) or the same.
    Zero,
    /// A time in seconds: may differ by one (the servers run the same
    /// steps a few milliseconds apart and round independently).
    WithinOneSecond,
}

/// Every accepted difference between beanstalkd's and millpond's replies:
/// (which reply, key, how it may differ). Nothing else is normalised but
/// job ids (numbered by order of appearance) and the body length of `OK`
/// replies to `stats*`. Keep in step with the section "Found by the
/// differential test" of `docs/beanstalkd-compat.md`; the test
/// [`every_exception_is_documented`] checks that each one is named there.
const EXCEPTIONS: &[(&str, &str, Allowed)] = &[
    // The process and the build.
    ("stats", "pid", Allowed::Any),
    ("stats", "version", Allowed::Any),
    ("stats", "rusage-utime", Allowed::Any),
    ("stats", "rusage-stime", Allowed::Any),
    ("stats", "uptime", Allowed::WithinOneSecond),
    ("stats", "id", Allowed::Any),
    // No binlog.
    ("stats", "binlog-oldest-index", Allowed::Zero),
    ("stats", "binlog-current-index", Allowed::Zero),
    ("stats", "binlog-max-size", Allowed::Zero),
    ("stats", "binlog-records-written", Allowed::Zero),
    ("stats", "binlog-records-migrated", Allowed::Zero),
    ("stats-job", "file", Allowed::Zero),
    // Figures the engine does not keep.
    ("stats", "current-jobs-urgent", Allowed::Zero),
    ("stats-tube", "current-jobs-urgent", Allowed::Zero),
    ("stats-job", "timeouts", Allowed::Zero),
    ("stats-job", "releases", Allowed::Zero),
    ("stats-job", "buries", Allowed::Zero),
    ("stats-job", "kicks", Allowed::Zero),
    ("stats-job", "reserves", Allowed::Any),
    ("stats-job", "delay", Allowed::Any),
    // Times.
    ("stats-job", "age", Allowed::WithinOneSecond),
    ("stats-job", "time-left", Allowed::WithinOneSecond),
    ("stats-tube", "pause-time-left", Allowed::WithinOneSecond),
];

/// One step of a session.
#[derive(Debug, Clone)]
enum Step {
    Use(String),
    Send(String),
    Expect(String),
    Quiet,
    Sleep(u64),
    Close,
    Signal(rustix::process::Signal),
}

/// A step with the line it came from.
#[derive(Debug, Clone)]
struct Line {
    number: usize,
    text: String,
    step: Step,
}

fn parse_session(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim_end_matches('\r');
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let step = if let Some(name) = trimmed.strip_prefix('@') {
            Step::Use(name.trim().to_owned())
        } else if let Some(rest) = trimmed.strip_prefix(">| ") {
            Step::Send(rest.to_owned())
        } else if let Some(rest) = trimmed.strip_prefix("> ") {
            Step::Send(format!("{rest}\\r\\n"))
        } else if trimmed == ">" {
            Step::Send("\\r\\n".to_owned())
        } else if let Some(rest) = trimmed.strip_prefix("< ") {
            Step::Expect(rest.to_owned())
        } else if trimmed == "quiet" {
            Step::Quiet
        } else if trimmed == "close" {
            Step::Close
        } else if let Some(name) = trimmed.strip_prefix("signal ") {
            Step::Signal(match name.trim() {
                "USR1" => rustix::process::Signal::USR1,
                other => panic!("line {number}: signal {other:?} is not used in sessions"),
            })
        } else if let Some(ms) = trimmed.strip_prefix("sleep ") {
            Step::Sleep(ms.trim().parse().expect("sleep MS"))
        } else {
            panic!("line {number}: not a session step: {trimmed:?}");
        };
        lines.push(Line {
            number,
            text: trimmed.to_owned(),
            step,
        });
    }
    lines
}

/// Expands escapes, repeats and job-id references in a send step.
fn expand(text: &str, ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let c = bytes[i + 1];
                i += 2;
                match c {
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'0' => out.push(0),
                    b'\\' => out.push(b'\\'),
                    b'x' => {
                        let hex = std::str::from_utf8(&bytes[i..i + 2]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).expect("\\xHH"));
                        i += 2;
                    }
                    other => panic!("unknown escape \\{}", other as char),
                }
            }
            b'$' if bytes.get(i + 1) == Some(&b'$') => {
                out.push(b'$');
                i += 2;
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = (i + 1..bytes.len())
                    .find(|&j| !bytes[j].is_ascii_digit())
                    .unwrap_or(bytes.len());
                let k: usize = text[i + 1..end].parse().unwrap();
                let id = ids
                    .get(k - 1)
                    .unwrap_or_else(|| panic!("${k}: only {} job ids seen", ids.len()));
                out.extend_from_slice(id.to_string().as_bytes());
                i = end;
            }
            b'{' if text[i..].starts_with("{{") => {
                let end = i + text[i..].find("}}").expect("{{N*S}}");
                let (n, s) = text[i + 2..end].split_once('*').expect("{{N*S}}");
                let n: usize = n.parse().expect("{{N*S}}");
                let piece = expand(s, ids);
                for _ in 0..n {
                    out.extend_from_slice(&piece);
                }
                i = end + 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The normalised form of one reply: its line and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Normal {
    line: String,
    body: Option<Body>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Bytes(Vec<u8>),
    /// A `stats*` dictionary, keys in order.
    Dict(Vec<(String, String)>),
}

/// What one server answered in a session.
struct Transcript {
    /// Job ids in order of first appearance.
    ids: Vec<u64>,
    /// Per `<` step: the normalised reply, and the raw reply for messages.
    replies: Vec<(Normal, Reply)>,
}

impl Transcript {
    fn id_ref(&mut self, id: &str) -> String {
        let Ok(id) = id.parse::<u64>() else {
            return id.to_owned();
        };
        let k = match self.ids.iter().position(|&seen| seen == id) {
            Some(k) => k,
            None => {
                self.ids.push(id);
                self.ids.len() - 1
            }
        };
        format!("${}", k + 1)
    }

    fn normalise(&mut self, reply: &Reply) -> Normal {
        let Reply::Line { line, body } = reply else {
            return Normal {
                line: "<EOF>".to_owned(),
                body: None,
            };
        };
        let words: Vec<&str> = line.split(' ').collect();
        let (line, dict) = match words.as_slice() {
            ["INSERTED", id] => (format!("INSERTED {}", self.id_ref(id)), false),
            ["BURIED", id] => (format!("BURIED {}", self.id_ref(id)), false),
            [word @ ("RESERVED" | "FOUND"), id, n] => {
                (format!("{word} {} {n}", self.id_ref(id)), false)
            }
            ["OK", n] => {
                let dict = body.as_deref().is_some_and(|b| {
                    server::parse_yaml_dict(b).is_ok() && !b.starts_with(b"---\n- ")
                });
                if dict {
                    ("OK *".to_owned(), true)
                } else {
                    (format!("OK {n}"), false)
                }
            }
            _ => (line.clone(), false),
        };
        let body = body.as_ref().map(|b| {
            if dict {
                let mut pairs = server::parse_yaml_dict(b).unwrap();
                if stats_kind(&pairs) == "stats-job" {
                    pairs[0].1 = self.id_ref(&pairs[0].1);
                }
                Body::Dict(pairs)
            } else {
                Body::Bytes(b.clone())
            }
        });
        Normal { line, body }
    }
}

/// Which command a `stats*` body answers, by its first key.
fn stats_kind(pairs: &[(String, String)]) -> &'static str {
    match pairs.first().map(|(k, _)| k.as_str()) {
        Some("id") => "stats-job",
        Some("name") => "stats-tube",
        _ => "stats",
    }
}

/// What a `quiet` step reads when no reply arrives.
const QUIET: &str = "<quiet>";

/// Whether a step reads (a `<` or `quiet` step), and what it expects.
fn expected(line: &Line) -> Option<&str> {
    match &line.step {
        Step::Expect(want) => Some(want),
        Step::Quiet => Some(QUIET),
        _ => None,
    }
}

/// A server under test.
enum Target {
    Beanstalkd(Beanstalkd),
    Millpond {
        server: Server,
        _store: tempfile::TempDir,
    },
}

impl Target {
    fn start_beanstalkd() -> Target {
        Target::Beanstalkd(Beanstalkd::start(&["-z", MAX_JOB_SIZE]))
    }

    fn start_millpond(durability: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(
            &dir.path().join("store"),
            &["--max-job-size", MAX_JOB_SIZE, "--durability", durability],
        );
        Target::Millpond {
            server,
            _store: dir,
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        match self {
            Target::Beanstalkd(b) => b.signal(signal),
            Target::Millpond { server, .. } => server.signal(signal),
        }
    }

    fn connect(&self) -> Conn {
        match self {
            Target::Beanstalkd(b) => b.connect(),
            Target::Millpond { server, .. } => server.connect(),
        }
    }
}

/// Runs `session` against `target`; the replies of every `<` step. Panics
/// on a reply that breaks framing or does not arrive in time.
fn run(name: &str, session: &[Line], target: &Target) -> Transcript {
    let mut transcript = Transcript {
        ids: Vec::new(),
        replies: Vec::new(),
    };
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut current = "a".to_owned();
    for line in session {
        let which = match target {
            Target::Beanstalkd(_) => "beanstalkd",
            Target::Millpond { .. } => "millpond",
        };
        let at = format!("{name}:{} ({which}) {:?}", line.number, line.text);
        match &line.step {
            Step::Use(conn) => current = conn.clone(),
            Step::Send(text) => {
                let bytes = expand(text, &transcript.ids);
                let conn = conns
                    .entry(current.clone())
                    .or_insert_with(|| target.connect());
                // A write may fail once the server closed the connection;
                // the next `<` step then reads `<EOF>`.
                let _ = conn.send(&bytes);
            }
            Step::Expect(_) => {
                let conn = conns
                    .entry(current.clone())
                    .or_insert_with(|| target.connect());
                let reply = conn
                    .try_read_reply()
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                let normal = transcript.normalise(&reply);
                transcript.replies.push((normal, reply));
            }
            Step::Quiet => {
                let conn = conns
                    .entry(current.clone())
                    .or_insert_with(|| target.connect());
                conn.set_read_timeout(Duration::from_millis(300));
                // Silence reads as `<quiet>`; anything else is compared.
                let reply = conn.try_read_reply().unwrap_or(Reply::Line {
                    line: QUIET.to_owned(),
                    body: None,
                });
                conn.set_read_timeout(server::READ_TIMEOUT);
                let normal = transcript.normalise(&reply);
                transcript.replies.push((normal, reply));
            }
            Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Step::Close => {
                conns.remove(&current);
            }
            Step::Signal(signal) => target.signal(*signal),
        }
    }
    transcript
}

/// Whether two stats values agree, given the exceptions for `command`.
fn values_agree(command: &str, key: &str, reference: &str, other: &str) -> bool {
    let allowed = EXCEPTIONS
        .iter()
        .find(|(c, k, _)| *c == command && *k == key)
        .map(|(_, _, a)| *a);
    match allowed {
        Some(Allowed::Any) => true,
        Some(Allowed::Zero) => other == reference || other == "0",
        Some(Allowed::WithinOneSecond) => match (reference.parse::<i64>(), other.parse::<i64>()) {
            (Ok(a), Ok(b)) => (a - b).abs() <= 1,
            _ => reference == other,
        },
        None => reference == other,
    }
}

/// The first difference between two normalised replies, if any.
fn difference(reference: &Normal, other: &Normal) -> Option<String> {
    if reference.line != other.line {
        return Some(format!(
            "line: beanstalkd {:?}, millpond {:?}",
            reference.line, other.line
        ));
    }
    match (&reference.body, &other.body) {
        (Some(Body::Dict(a)), Some(Body::Dict(b))) => {
            let command = stats_kind(a);
            let keys_a: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
            let keys_b: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
            if keys_a != keys_b {
                return Some(format!(
                    "{command} keys: beanstalkd {keys_a:?}, millpond {keys_b:?}"
                ));
            }
            let differing: Vec<String> = a
                .iter()
                .zip(b)
                .filter(|((key, va), (_, vb))| !values_agree(command, key, va, vb))
                .map(|((key, va), (_, vb))| format!("{key}: beanstalkd {va:?}, millpond {vb:?}"))
                .collect();
            if differing.is_empty() {
                None
            } else {
                Some(format!("{command} {}", differing.join("; ")))
            }
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("body: beanstalkd {a:?}, millpond {b:?}")),
    }
}

fn sessions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sessions")
}

fn load(name: &str) -> Vec<Line> {
    let path = sessions_dir().join(format!("{name}.session"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_session(&text)
}

/// Rewrites the session file with beanstalkd's normalised replies in its
/// `<` lines.
fn record(name: &str, session: &[Line], transcript: &Transcript) {
    let path = sessions_dir().join(format!("{name}.session"));
    let text = std::fs::read_to_string(&path).unwrap();
    let recorded: HashMap<usize, &str> = session
        .iter()
        .filter(|l| expected(l).is_some())
        .zip(&transcript.replies)
        .filter(|(l, _)| matches!(l.step, Step::Expect(_)))
        .map(|(l, (normal, _))| (l.number, normal.line.as_str()))
        .collect();
    let mut out = String::new();
    for (index, raw) in text.lines().enumerate() {
        if let Some(line) = recorded.get(&(index + 1)) {
            out.push_str(&format!("< {line}\n"));
        } else {
            out.push_str(raw);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).unwrap();
}

/// Runs session `name` on both servers and compares (millpond under
/// `--durability sync`).
fn differential(name: &str) {
    differential_under(name, "sync");
}

/// Runs session `name` on beanstalkd and on millpond under `durability`,
/// and compares.
fn differential_under(name: &str, durability: &str) {
    let session = load(name);
    let reference = run(name, &session, &Target::start_beanstalkd());
    if std::env::var_os("MILLPOND_SESSIONS_RECORD").is_some() {
        record(name, &session, &reference);
        return;
    }
    let expects: Vec<&Line> = session.iter().filter(|l| expected(l).is_some()).collect();
    for (line, (normal, raw)) in expects.iter().zip(&reference.replies) {
        let want = expected(line).unwrap();
        assert_eq!(
            normal.line, want,
            "{name}:{}: beanstalkd answered {raw:?}; the session expects {want:?}",
            line.number
        );
    }
    let other = run(name, &session, &Target::start_millpond(durability));
    let mut report = String::new();
    for (index, line) in expects.iter().enumerate() {
        let (ref_normal, ref_raw) = &reference.replies[index];
        let (normal, raw) = &other.replies[index];
        if let Some(diff) = difference(ref_normal, normal) {
            report.push_str(&format!(
                "{name}:{} ({}): {diff}\n  beanstalkd: {}\n  millpond:   {}\n",
                line.number,
                command_before(&session, line.number),
                show(ref_raw),
                show(raw)
            ));
        }
    }
    assert!(report.is_empty(), "replies differ:\n{report}");
}

/// The last send step before line `number`, for messages.
fn command_before(session: &[Line], number: usize) -> String {
    session
        .iter()
        .rfind(|l| l.number < number && matches!(l.step, Step::Send(_)))
        .map(|l| l.text.clone())
        .unwrap_or_default()
}

/// A reply for messages: its line and its body as (lossy) text.
fn show(reply: &Reply) -> String {
    match reply {
        Reply::Line {
            line,
            body: Some(body),
        } => format!("{line} {:?}", String::from_utf8_lossy(body)),
        other => other.line().to_owned(),
    }
}

#[test]
fn every_exception_is_documented() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/beanstalkd-compat.md");
    let doc =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Found by the differential test"))
        .expect("docs/beanstalkd-compat.md has a section \"Found by the differential test\"");
    // Its table has one row per exception: | `command` `key` | ... |
    let documented: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|row| {
            let cell = row.split(" |").next().unwrap();
            let (command, key) = cell
                .split_once("` `")
                .unwrap_or_else(|| panic!("row {row:?}: first cell is not `command` `key`"));
            (command.to_owned(), key.trim_end_matches('`').to_owned())
        })
        .collect();
    let in_test: Vec<(String, String)> = EXCEPTIONS
        .iter()
        .map(|(c, k, _)| ((*c).to_owned(), (*k).to_owned()))
        .collect();
    for exception in &in_test {
        assert!(
            documented.contains(exception),
            "docs/beanstalkd-compat.md does not list the accepted difference {exception:?}"
        );
    }
    for row in &documented {
        assert!(
            in_test.contains(row),
            "docs/beanstalkd-compat.md lists {row:?}, which the normaliser does not accept"
        );
    }
}

#[test]
fn session_format_expands_escapes_repeats_and_ids() {
    assert_eq!(
        expand("put $2 \\x41{{3*ab}}$$\\r\\n", &[7, 1099511627777]),
        b"put 1099511627777 Aababab$\r\n"
    );
}

#[test]
fn session_put_reserve_delete() {
    differential("put_reserve_delete");
}

/// Under `interval`, connections run their deletes themselves rather than
/// through the tube's delete thread: the same replies.
#[test]
fn session_put_reserve_delete_with_inline_deletes() {
    differential_under("put_reserve_delete", "interval:50ms");
}

#[test]
fn session_states_with_inline_deletes() {
    differential_under("states", "interval:50ms");
}

#[test]
fn session_drain_with_inline_deletes() {
    differential_under("drain", "buffered");
}

#[test]
fn session_tubes() {
    differential("tubes");
}

#[test]
fn session_across_tubes() {
    differential("across_tubes");
}

#[test]
fn session_tie_across_tubes() {
    differential("tie_across_tubes");
}

#[test]
fn session_delayed_behind_ready() {
    differential("delayed_behind_ready");
}

#[test]
fn session_states() {
    differential("states");
}

#[test]
fn session_timeouts() {
    differential("timeouts");
}

#[test]
fn session_pause() {
    differential("pause");
}

#[test]
fn session_malformed() {
    differential("malformed");
}

#[test]
fn session_reserve_timeout_numbers() {
    differential("reserve_timeout_numbers");
}

#[test]
fn session_stats() {
    differential("stats");
}

#[test]
fn session_quit() {
    differential("quit");
}

#[test]
fn session_drain() {
    differential("drain");
}
