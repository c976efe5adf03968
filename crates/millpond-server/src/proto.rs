//! The beanstalkd wire protocol: command lines in, reply lines out.
//!
//! Parsing follows beanstalkd 1.12's `prot.c` to the byte, quirks
//! included: commands are matched by prefix in its order (so `quitx` is
//! `quit` and `reservex` is a malformed `reserve`), numbers are decimal
//! with leading spaces and no sign, except `kick` (C's `strtoul`) and
//! `reserve-with-timeout` (`strtol`, as in the 1.12 release), which also
//! ignore what follows their number, `put` checks the body size against
//! the limit before it rejects trailing garbage.

use crate::names::{is_name_byte, is_valid_tube};

/// Bytes of the line buffer, `\r\n` included (beanstalkd's
/// `LINE_BUF_SIZE`: 11 + 201 + 12). A line that does not end within it is
/// discarded and answered with `BAD_FORMAT`.
pub const LINE_BYTES_MAX: usize = 224;

/// `NOT_FOUND`.
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
/// `BAD_FORMAT`.
pub const BAD_FORMAT: &[u8] = b"BAD_FORMAT\r\n";
/// `UNKNOWN_COMMAND`.
pub const UNKNOWN_COMMAND: &[u8] = b"UNKNOWN_COMMAND\r\n";
/// `EXPECTED_CRLF`.
pub const EXPECTED_CRLF: &[u8] = b"EXPECTED_CRLF\r\n";
/// `JOB_TOO_BIG`.
pub const JOB_TOO_BIG: &[u8] = b"JOB_TOO_BIG\r\n";
/// `OUT_OF_MEMORY`.
pub const OUT_OF_MEMORY: &[u8] = b"OUT_OF_MEMORY\r\n";
/// `INTERNAL_ERROR`.
pub const INTERNAL_ERROR: &[u8] = b"INTERNAL_ERROR\r\n";
/// `DRAINING`.
pub const DRAINING: &[u8] = b"DRAINING\r\n";
/// `DEADLINE_SOON`.
pub const DEADLINE_SOON: &[u8] = b"DEADLINE_SOON\r\n";
/// `TIMED_OUT`.
pub const TIMED_OUT: &[u8] = b"TIMED_OUT\r\n";
/// `NOT_IGNORED`.
pub const NOT_IGNORED: &[u8] = b"NOT_IGNORED\r\n";

/// Commands, for counting (`stats`, metrics) in beanstalkd's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Put,
    Peek,
    PeekReady,
    PeekDelayed,
    PeekBuried,
    Reserve,
    ReserveWithTimeout,
    ReserveJob,
    Delete,
    Release,
    Use,
    Watch,
    Ignore,
    Bury,
    Kick,
    KickJob,
    Touch,
    Stats,
    StatsJob,
    StatsTube,
    ListTubes,
    ListTubeUsed,
    ListTubesWatched,
    PauseTube,
    Quit,
}

/// Number of [`Op`]s.
pub const OP_COUNT: usize = 25;

impl Op {
    /// Every op, in `stats` order.
    pub const ALL: [Op; OP_COUNT] = [
        Op::Put,
        Op::Peek,
        Op::PeekReady,
        Op::PeekDelayed,
        Op::PeekBuried,
        Op::Reserve,
        Op::ReserveWithTimeout,
        Op::ReserveJob,
        Op::Delete,
        Op::Release,
        Op::Use,
        Op::Watch,
        Op::Ignore,
        Op::Bury,
        Op::Kick,
        Op::KickJob,
        Op::Touch,
        Op::Stats,
        Op::StatsJob,
        Op::StatsTube,
        Op::ListTubes,
        Op::ListTubeUsed,
        Op::ListTubesWatched,
        Op::PauseTube,
        Op::Quit,
    ];

    /// The command's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Peek => "peek",
            Op::PeekReady => "peek-ready",
            Op::PeekDelayed => "peek-delayed",
            Op::PeekBuried => "peek-buried",
            Op::Reserve => "reserve",
            Op::ReserveWithTimeout => "reserve-with-timeout",
            Op::ReserveJob => "reserve-job",
            Op::Delete => "delete",
            Op::Release => "release",
            Op::Use => "use",
            Op::Watch => "watch",
            Op::Ignore => "ignore",
            Op::Bury => "bury",
            Op::Kick => "kick",
            Op::KickJob => "kick-job",
            Op::Touch => "touch",
            Op::Stats => "stats",
            Op::StatsJob => "stats-job",
            Op::StatsTube => "stats-tube",
            Op::ListTubes => "list-tubes",
            Op::ListTubeUsed => "list-tube-used",
            Op::ListTubesWatched => "list-tubes-watched",
            Op::PauseTube => "pause-tube",
            Op::Quit => "quit",
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Command<'a> {
    /// `put`: the body (`bytes` + 2 with its `\r\n`) follows.
    Put {
        priority: u32,
        delay_s: u32,
        ttr_s: u32,
        bytes: u32,
    },
    Peek(u64),
    PeekReady,
    PeekDelayed,
    PeekBuried,
    /// `reserve` (`None`) or `reserve-with-timeout` (seconds).
    Reserve(Option<u32>),
    /// `reserve-with-timeout` with a negative timeout: waits forever, like
    /// `reserve`, but counted as `reserve-with-timeout`.
    ReserveForever,
    ReserveJob(u64),
    Delete(u64),
    Release {
        id: u64,
        priority: u32,
        delay_s: u32,
    },
    Bury {
        id: u64,
        priority: u32,
    },
    Kick(u32),
    KickJob(u64),
    Touch(u64),
    Stats,
    StatsJob(u64),
    StatsTube(&'a str),
    ListTubes,
    ListTubeUsed,
    ListTubesWatched,
    Use(&'a str),
    Watch(&'a str),
    Ignore(&'a str),
    PauseTube {
        name: &'a str,
        delay_s: u32,
    },
    Quit,
}

impl Command<'_> {
    /// The op, for counting.
    pub fn op(&self) -> Op {
        match self {
            Command::Put { .. } => Op::Put,
            Command::Peek(_) => Op::Peek,
            Command::PeekReady => Op::PeekReady,
            Command::PeekDelayed => Op::PeekDelayed,
            Command::PeekBuried => Op::PeekBuried,
            Command::Reserve(None) => Op::Reserve,
            Command::Reserve(Some(_)) | Command::ReserveForever => Op::ReserveWithTimeout,
            Command::ReserveJob(_) => Op::ReserveJob,
            Command::Delete(_) => Op::Delete,
            Command::Release { .. } => Op::Release,
            Command::Bury { .. } => Op::Bury,
            Command::Kick(_) => Op::Kick,
            Command::KickJob(_) => Op::KickJob,
            Command::Touch(_) => Op::Touch,
            Command::Stats => Op::Stats,
            Command::StatsJob(_) => Op::StatsJob,
            Command::StatsTube(_) => Op::StatsTube,
            Command::ListTubes => Op::ListTubes,
            Command::ListTubeUsed => Op::ListTubeUsed,
            Command::ListTubesWatched => Op::ListTubesWatched,
            Command::Use(_) => Op::Use,
            Command::Watch(_) => Op::Watch,
            Command::Ignore(_) => Op::Ignore,
            Command::PauseTube { .. } => Op::PauseTube,
            Command::Quit => Op::Quit,
        }
    }
}

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A well-formed command.
    Command(Command<'a>),
    /// An error reply, nothing else to do.
    Reply(&'static [u8]),
    /// A `put` whose body is over the limit: discard `bytes` (body and its
    /// `\r\n`), then answer `JOB_TOO_BIG`.
    TooBig {
        /// Bytes to discard.
        bytes: u64,
    },
}

/// Finds the end of the first command line in `buf` the way beanstalkd
/// does: the first `\r` among the first `LINE_BYTES_MAX - 1` bytes must be
/// followed by `\n`. Returns the line length including `\r\n`.
pub fn line_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(LINE_BYTES_MAX)];
    if window.len() < 2 {
        return None;
    }
    let i = window[..window.len() - 1]
        .iter()
        .position(|&b| b == b'\r')?;
    (window[i + 1] == b'\n').then_some(i + 2)
}

/// Skips spaces, then reads a decimal number up to `max` the way
/// `read_u64`/`read_u32` do; returns it and the rest.
fn read_num(buf: &[u8], max: u64) -> Option<(u64, &[u8])> {
    let mut i = 0;
    while buf.get(i) == Some(&b' ') {
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    let mut overflow = false;
    while let Some(&d) = buf.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
        {
            Some(v) => n = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start || overflow || n > max {
        return None;
    }
    Some((n, &buf[i..]))
}

fn u32_then(buf: &[u8]) -> Option<(u32, &[u8])> {
    read_num(buf, u64::from(u32::MAX)).map(|(n, r)| (n as u32, r))
}

fn u32_end(buf: &[u8]) -> Option<u32> {
    match u32_then(buf)? {
        (n, []) => Some(n),
        _ => None,
    }
}

fn u64_end(buf: &[u8]) -> Option<u64> {
    match read_num(buf, u64::MAX)? {
        (n, []) => Some(n),
        _ => None,
    }
}

/// What C's `strtol`/`strtoul` skip before the digits: leading white space
/// (`isspace`) and one optional sign. Returns the index of the first digit
/// and whether the sign was `-`.
fn skip_space_and_sign(buf: &[u8]) -> (usize, bool) {
    let mut i = 0;
    while buf
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'))
    {
        i += 1;
    }
    match buf.get(i) {
        Some(b'-') => (i + 1, true),
        Some(b'+') => (i + 1, false),
        _ => (i, false),
    }
}

/// C's `strtol(s, &end, 10)` on a 64-bit platform: leading white space,
/// an optional sign, digits; no digits is 0; trailing bytes ignored.
/// `None` when the value overflows a 64-bit long (`ERANGE`).
fn strtol(buf: &[u8]) -> Option<i64> {
    let (mut i, negative) = skip_space_and_sign(buf);
    let mut n: i128 = 0;
    while let Some(&d) = buf.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        n = n * 10 + i128::from(d - b'0');
        if n > i128::from(i64::MAX) + 1 {
            return None;
        }
        i += 1;
    }
    let n = if negative { -n } else { n };
    i64::try_from(n).ok()
}

/// C's `strtoul(s, &end, 10)` on a 64-bit platform, truncated to the
/// 32-bit `uint` beanstalkd keeps: leading white space, an optional sign,
/// digits; trailing bytes ignored. `None` for no digits or overflow.
fn strtoul_u32(buf: &[u8]) -> Option<u32> {
    let (mut i, negative) = skip_space_and_sign(buf);
    let start = i;
    let mut n: u64 = 0;
    while let Some(&d) = buf.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    if i == start {
        return None;
    }
    let n = if negative { n.wrapping_neg() } else { n };
    Some(n as u32)
}

fn tube_arg(rest: &[u8]) -> Option<&str> {
    if is_valid_tube(rest) {
        std::str::from_utf8(rest).ok()
    } else {
        None
    }
}

/// Parses one command line (without its `\r\n`). `max_job_bytes` is the
/// body limit of `put`.
pub fn parse(line: &[u8], max_job_bytes: u32) -> Parsed<'_> {
    use Command as C;
    if line.contains(&0) {
        return Parsed::Reply(BAD_FORMAT);
    }
    let bad = Parsed::Reply(BAD_FORMAT);
    fn cmd(c: Option<Command<'_>>) -> Parsed<'_> {
        match c {
            Some(c) => Parsed::Command(c),
            None => Parsed::Reply(BAD_FORMAT),
        }
    }
    let exact = |name: &[u8], c: Command<'static>| -> Parsed<'static> {
        if line == name {
            Parsed::Command(c)
        } else {
            Parsed::Reply(BAD_FORMAT)
        }
    };
    if let Some(rest) = line.strip_prefix(b"put ") {
        let Some((priority, r)) = u32_then(rest) else {
            return bad;
        };
        let Some((delay_s, r)) = u32_then(r) else {
            return bad;
        };
        let Some((ttr_s, r)) = u32_then(r) else {
            return bad;
        };
        let Some((bytes, r)) = u32_then(r) else {
            return bad;
        };
        if bytes > max_job_bytes {
            return Parsed::TooBig {
                bytes: u64::from(bytes) + 2,
            };
        }
        if !r.is_empty() {
            return bad;
        }
        return Parsed::Command(C::Put {
            priority,
            delay_s,
            ttr_s,
            bytes,
        });
    }
    if let Some(rest) = line.strip_prefix(b"peek ") {
        return cmd(u64_end(rest).map(C::Peek));
    }
    if line.starts_with(b"peek-ready") {
        return exact(b"peek-ready", C::PeekReady);
    }
    if line.starts_with(b"peek-delayed") {
        return exact(b"peek-delayed", C::PeekDelayed);
    }
    if line.starts_with(b"peek-buried") {
        return exact(b"peek-buried", C::PeekBuried);
    }
    if let Some(rest) = line.strip_prefix(b"reserve-with-timeout ") {
        // beanstalkd 1.12: `timeout = strtol(...)` into an `int`, only
        // overflow of the long is an error; a negative timeout waits
        // forever, no digits is 0.
        return match strtol(rest) {
            Some(t) => match t as i32 {
                t if t < 0 => Parsed::Command(C::ReserveForever),
                t => Parsed::Command(C::Reserve(Some(t as u32))),
            },
            None => bad,
        };
    }
    if let Some(rest) = line.strip_prefix(b"reserve-job ") {
        return cmd(u64_end(rest).map(C::ReserveJob));
    }
    if line.starts_with(b"reserve") {
        return exact(b"reserve", C::Reserve(None));
    }
    if let Some(rest) = line.strip_prefix(b"delete ") {
        return cmd(u64_end(rest).map(C::Delete));
    }
    if let Some(rest) = line.strip_prefix(b"release ") {
        let parsed = read_num(rest, u64::MAX).and_then(|(id, r)| {
            let (priority, r) = u32_then(r)?;
            Some(C::Release {
                id,
                priority,
                delay_s: u32_end(r)?,
            })
        });
        return cmd(parsed);
    }
    if let Some(rest) = line.strip_prefix(b"bury ") {
        let parsed = read_num(rest, u64::MAX).and_then(|(id, r)| {
            Some(C::Bury {
                id,
                priority: u32_end(r)?,
            })
        });
        return cmd(parsed);
    }
    if let Some(rest) = line.strip_prefix(b"kick ") {
        return cmd(strtoul_u32(rest).map(C::Kick));
    }
    if let Some(rest) = line.strip_prefix(b"kick-job ") {
        return cmd(u64_end(rest).map(C::KickJob));
    }
    if let Some(rest) = line.strip_prefix(b"touch ") {
        return cmd(u64_end(rest).map(C::Touch));
    }
    if let Some(rest) = line.strip_prefix(b"stats-job ") {
        return cmd(u64_end(rest).map(C::StatsJob));
    }
    if let Some(rest) = line.strip_prefix(b"stats-tube ") {
        return cmd(tube_arg(rest).map(C::StatsTube));
    }
    if line.starts_with(b"stats") {
        return exact(b"stats", C::Stats);
    }
    if let Some(rest) = line.strip_prefix(b"use ") {
        return cmd(tube_arg(rest).map(C::Use));
    }
    if let Some(rest) = line.strip_prefix(b"watch ") {
        return cmd(tube_arg(rest).map(C::Watch));
    }
    if let Some(rest) = line.strip_prefix(b"ignore ") {
        return cmd(tube_arg(rest).map(C::Ignore));
    }
    if line.starts_with(b"list-tubes-watched") {
        return exact(b"list-tubes-watched", C::ListTubesWatched);
    }
    if line.starts_with(b"list-tube-used") {
        return exact(b"list-tube-used", C::ListTubeUsed);
    }
    if line.starts_with(b"list-tubes") {
        return exact(b"list-tubes", C::ListTubes);
    }
    if line.starts_with(b"quit") {
        return Parsed::Command(C::Quit);
    }
    if let Some(rest) = line.strip_prefix(b"pause-tube") {
        let mut i = 0;
        while rest.get(i) == Some(&b' ') {
            i += 1;
        }
        let name_len = rest[i..].iter().take_while(|&&b| is_name_byte(b)).count();
        if name_len == 0 {
            return bad;
        }
        let name = &rest[i..i + name_len];
        let Some(delay_s) = u32_end(&rest[i + name_len..]) else {
            return bad;
        };
        return cmd(tube_arg(name).map(|name| C::PauseTube { name, delay_s }));
    }
    Parsed::Reply(UNKNOWN_COMMAND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Parsed<'_> {
        parse(line.as_bytes(), 65535)
    }

    #[test]
    fn put_numbers_limits_and_garbage() {
        assert_eq!(
            p("put 1 2 3 4"),
            Parsed::Command(Command::Put {
                priority: 1,
                delay_s: 2,
                ttr_s: 3,
                bytes: 4
            })
        );
        assert_eq!(
            p("put   0  0   0  0"),
            Parsed::Command(Command::Put {
                priority: 0,
                delay_s: 0,
                ttr_s: 0,
                bytes: 0
            })
        );
        assert_eq!(p("put 4294967296 0 0 1"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("put -1 0 0 1"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("put 1 2 3 4 "), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("put 1 2 3"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("put 1 2 3 65536"), Parsed::TooBig { bytes: 65538 });
        // The size check comes before the garbage check, as in beanstalkd.
        assert_eq!(p("put 1 2 3 65536x"), Parsed::TooBig { bytes: 65538 });
        assert_eq!(p("put"), Parsed::Reply(UNKNOWN_COMMAND));
    }

    #[test]
    fn prefix_matching_follows_beanstalkd() {
        assert_eq!(p("quitnow"), Parsed::Command(Command::Quit));
        assert_eq!(p("reservex"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("reserve"), Parsed::Command(Command::Reserve(None)));
        assert_eq!(
            p("reserve-with-timeout 5junk"),
            Parsed::Command(Command::Reserve(Some(5)))
        );
        // beanstalkd 1.12 reads the timeout with strtol into an int.
        for (line, want) in [
            ("reserve-with-timeout 2147483648", Command::ReserveForever),
            ("reserve-with-timeout -1", Command::ReserveForever),
            ("reserve-with-timeout x", Command::Reserve(Some(0))),
            ("reserve-with-timeout ", Command::Reserve(Some(0))),
            ("reserve-with-timeout 4294967296", Command::Reserve(Some(0))),
            ("reserve-with-timeout  +7", Command::Reserve(Some(7))),
        ] {
            assert_eq!(p(line), Parsed::Command(want), "{line}");
        }
        assert_eq!(
            p("reserve-with-timeout 99999999999999999999"),
            Parsed::Reply(BAD_FORMAT)
        );
        assert_eq!(p("stats "), Parsed::Reply(BAD_FORMAT));
        assert_eq!(
            p("list-tubes-watched"),
            Parsed::Command(Command::ListTubesWatched)
        );
        assert_eq!(p("list-tubesx"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p(""), Parsed::Reply(UNKNOWN_COMMAND));
        assert_eq!(p("PUT 1 2 3 4"), Parsed::Reply(UNKNOWN_COMMAND));
        assert_eq!(
            p("delete 18446744073709551615"),
            Parsed::Command(Command::Delete(u64::MAX))
        );
        assert_eq!(p("delete 18446744073709551616"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("delete 1 "), Parsed::Reply(BAD_FORMAT));
        assert_eq!(parse(b"delete 1\0", 10), Parsed::Reply(BAD_FORMAT));
    }

    #[test]
    fn kick_parses_like_strtoul() {
        assert_eq!(p("kick 5abc"), Parsed::Command(Command::Kick(5)));
        assert_eq!(p("kick  +7"), Parsed::Command(Command::Kick(7)));
        assert_eq!(p("kick -1"), Parsed::Command(Command::Kick(u32::MAX)));
        assert_eq!(p("kick 4294967296"), Parsed::Command(Command::Kick(0)));
        assert_eq!(p("kick x"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("kick 99999999999999999999"), Parsed::Reply(BAD_FORMAT));
    }

    #[test]
    fn tube_arguments() {
        assert_eq!(p("use foo"), Parsed::Command(Command::Use("foo")));
        assert_eq!(p("use  foo"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("watch -x"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(
            p("pause-tube foo 10"),
            Parsed::Command(Command::PauseTube {
                name: "foo",
                delay_s: 10
            })
        );
        assert_eq!(
            p("pause-tubefoo 1"),
            Parsed::Command(Command::PauseTube {
                name: "foo",
                delay_s: 1
            })
        );
        assert_eq!(p("pause-tube foo"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(p("pause-tube -foo 1"), Parsed::Reply(BAD_FORMAT));
    }

    #[test]
    fn line_end_is_the_first_cr_and_only_if_lf_follows() {
        assert_eq!(line_end(b"stats\r\n"), Some(7));
        assert_eq!(line_end(b"stats\r"), None);
        assert_eq!(line_end(b"a\rb\r\n"), None);
        let mut long = vec![b'x'; LINE_BYTES_MAX - 2];
        long.extend_from_slice(b"\r\n");
        assert_eq!(line_end(&long), Some(LINE_BYTES_MAX));
        let mut over = vec![b'x'; LINE_BYTES_MAX - 1];
        over.extend_from_slice(b"\r\n");
        assert_eq!(line_end(&over), None);
    }
}
