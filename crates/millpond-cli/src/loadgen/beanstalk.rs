//! The beanstalkd text protocol (version 1.12, `doc/protocol.txt` of the
//! beanstalkd repository), client side: the commands the load generator
//! sends and a decoder for every reply they can get.
//!
//! A reply is one line ending in `\r\n`; `RESERVED`, `FOUND` and `OK`
//! lines announce a body of that many bytes, followed by `\r\n`.

use std::io;

use super::Session;
use super::conn::{Conn, DecodeError, Decoded, find_crlf, parse_u64};

/// Longest reply line we accept (without its `\r\n`). beanstalkd's own
/// lines are under 100 bytes; tube names are at most 200.
const LINE_BYTES_MAX: usize = 1024;
/// Largest body we accept (beanstalkd's default `-z` is 65,535; millpond
/// allows more).
const BODY_BYTES_MAX: u64 = 16 << 20;
/// Time to run of every job: long enough that no reservation of a run
/// expires.
const TTR_SECONDS: u32 = 60;

/// A reply of a beanstalkd server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `INSERTED <id>`: the job is stored.
    Inserted(u64),
    /// `BURIED <id>`: the job was put but buried (the server ran out of
    /// memory growing a queue).
    Buried(u64),
    /// `RESERVED <id> <bytes>` and the body.
    Reserved(u64, Vec<u8>),
    /// `FOUND <id> <bytes>` and the body (peek).
    Found(u64, Vec<u8>),
    /// `OK <bytes>` and the body (stats, lists).
    Ok(Vec<u8>),
    /// `DELETED`.
    Deleted,
    /// `USING <tube>`.
    Using(String),
    /// `WATCHING <count>`.
    Watching(u64),
    /// `TIMED_OUT`: no job within the reserve timeout.
    TimedOut,
    /// `DEADLINE_SOON`: a reserved job's time to run is about to end.
    DeadlineSoon,
    /// `NOT_FOUND`.
    NotFound,
    /// Any other line: an error such as `BAD_FORMAT`, `JOB_TOO_BIG`,
    /// `DRAINING`, `OUT_OF_MEMORY`, `NOT_IGNORED`, or a reply this client
    /// does not expect.
    Other(String),
}

/// Decodes one reply from the front of `bytes`.
///
/// # Errors
///
/// A line longer than [`LINE_BYTES_MAX`], not ASCII, with a malformed
/// number, a body larger than [`BODY_BYTES_MAX`], or a body not followed
/// by `\r\n`.
pub fn decode(bytes: &[u8]) -> Decoded<Reply> {
    let Some(end) = find_crlf(&bytes[..bytes.len().min(LINE_BYTES_MAX + 2)]) else {
        if bytes.len() >= LINE_BYTES_MAX + 2 {
            return Err(DecodeError(format!(
                "a reply line is longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        return Ok(None);
    };
    let line = &bytes[..end];
    if !line.is_ascii() {
        return Err(DecodeError(format!(
            "a reply line is not ASCII: {}",
            String::from_utf8_lossy(line)
        )));
    }
    let text = std::str::from_utf8(line).expect("ASCII is UTF-8");
    let words: Vec<&str> = text.split(' ').collect();
    let number = |word: &str| {
        parse_u64(word.as_bytes())
            .ok_or_else(|| DecodeError(format!("a malformed number in reply {text:?}")))
    };
    let line_used = end + 2;
    let reply = match words.as_slice() {
        ["INSERTED", id] => Reply::Inserted(number(id)?),
        ["BURIED", id] => Reply::Buried(number(id)?),
        ["RESERVED", id, len] | ["FOUND", id, len] => {
            let id = number(id)?;
            let Some((body, used)) = body(&bytes[line_used..], number(len)?, text)? else {
                return Ok(None);
            };
            let reply = if words[0] == "RESERVED" {
                Reply::Reserved(id, body)
            } else {
                Reply::Found(id, body)
            };
            return Ok(Some((reply, line_used + used)));
        }
        ["OK", len] => {
            let Some((body, used)) = body(&bytes[line_used..], number(len)?, text)? else {
                return Ok(None);
            };
            return Ok(Some((Reply::Ok(body), line_used + used)));
        }
        ["DELETED"] => Reply::Deleted,
        ["USING", tube] => Reply::Using((*tube).to_owned()),
        ["WATCHING", count] => Reply::Watching(number(count)?),
        ["TIMED_OUT"] => Reply::TimedOut,
        ["DEADLINE_SOON"] => Reply::DeadlineSoon,
        ["NOT_FOUND"] => Reply::NotFound,
        _ => Reply::Other(text.to_owned()),
    };
    Ok(Some((reply, line_used)))
}

/// The body of `len` bytes and its `\r\n` at the front of `bytes`.
fn body(bytes: &[u8], len: u64, line: &str) -> Decoded<Vec<u8>> {
    if len > BODY_BYTES_MAX {
        return Err(DecodeError(format!(
            "reply {line:?} announces more than {BODY_BYTES_MAX} bytes"
        )));
    }
    let len = usize::try_from(len).expect("at most BODY_BYTES_MAX");
    if bytes.len() < len + 2 {
        return Ok(None);
    }
    if &bytes[len..len + 2] != b"\r\n" {
        return Err(DecodeError(format!(
            "the body of reply {line:?} does not end in \\r\\n"
        )));
    }
    Ok(Some((bytes[..len].to_vec(), len + 2)))
}

/// Appends `put <priority> 0 <ttr> <bytes>` and the body.
pub fn put(out: &mut Vec<u8>, priority: u32, body: &[u8]) {
    out.extend_from_slice(format!("put {priority} 0 {TTR_SECONDS} {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Appends `reserve-with-timeout 0`: a job, or `TIMED_OUT` at once when
/// none is ready.
pub fn reserve_now(out: &mut Vec<u8>) {
    out.extend_from_slice(b"reserve-with-timeout 0\r\n");
}

/// Appends `delete <id>`.
pub fn delete(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(format!("delete {id}\r\n").as_bytes());
}

/// A load-generator client speaking the beanstalkd protocol.
#[derive(Debug)]
pub struct Beanstalk {
    conn: Conn,
    /// Priority of every job it puts.
    priority: u32,
    /// Ids reserved by the last [`Session::reserve`] batch.
    ids: Vec<u64>,
}

impl Beanstalk {
    /// Uses and watches `tube` (and ignores `default` when it is another
    /// tube), so puts and reserves stay in it; puts jobs with `priority`.
    ///
    /// # Errors
    ///
    /// I/O; a reply other than the protocol's for these commands.
    pub fn open(mut conn: Conn, tube: &str, priority: u32) -> io::Result<Beanstalk> {
        if tube != "default" {
            let out = conn.out();
            out.extend_from_slice(
                format!("use {tube}\r\nwatch {tube}\r\nignore default\r\n").as_bytes(),
            );
            conn.flush()?;
            expect(
                &mut conn,
                "use",
                |r| matches!(r, Reply::Using(t) if t == tube),
            )?;
            expect(&mut conn, "watch", |r| matches!(r, Reply::Watching(2)))?;
            expect(&mut conn, "ignore", |r| matches!(r, Reply::Watching(1)))?;
        }
        Ok(Beanstalk {
            conn,
            priority,
            ids: Vec::new(),
        })
    }
}

/// Reads one reply and fails unless `ok` accepts it.
fn expect(conn: &mut Conn, command: &str, ok: impl Fn(&Reply) -> bool) -> io::Result<Reply> {
    let reply = conn.reply(decode)?;
    if ok(&reply) {
        Ok(reply)
    } else {
        Err(unexpected(command, &reply))
    }
}

fn unexpected(command: &str, reply: &Reply) -> io::Error {
    io::Error::other(format!("beanstalkd protocol: {command} got {reply:?}"))
}

impl Session for Beanstalk {
    fn put(&mut self, bodies: &[Vec<u8>], done: &mut dyn FnMut()) -> io::Result<()> {
        for body in bodies {
            put(self.conn.out(), self.priority, body);
        }
        self.conn.flush()?;
        for _ in bodies {
            expect(&mut self.conn, "put", |r| matches!(r, Reply::Inserted(_)))?;
            done();
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> io::Result<usize> {
        self.ids.clear();
        for _ in 0..n {
            reserve_now(self.conn.out());
        }
        self.conn.flush()?;
        for _ in 0..n {
            match self.conn.reply(decode)? {
                Reply::Reserved(id, _) => self.ids.push(id),
                Reply::TimedOut => {}
                other => return Err(unexpected("reserve-with-timeout", &other)),
            }
        }
        Ok(self.ids.len())
    }

    fn settle(&mut self, done: &mut dyn FnMut()) -> io::Result<()> {
        for &id in &self.ids {
            delete(self.conn.out(), id);
        }
        self.conn.flush()?;
        for _ in 0..self.ids.len() {
            expect(&mut self.conn, "delete", |r| *r == Reply::Deleted)?;
            done();
        }
        self.ids.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> (Reply, usize) {
        decode(bytes).unwrap().unwrap()
    }

    #[test]
    fn decodes_each_reply_kind() {
        assert_eq!(one(b"INSERTED 17\r\n"), (Reply::Inserted(17), 13));
        assert_eq!(one(b"BURIED 3\r\n").0, Reply::Buried(3));
        assert_eq!(
            one(b"RESERVED 9 5\r\nhello\r\nDELETED\r\n"),
            (Reply::Reserved(9, b"hello".to_vec()), 21)
        );
        assert_eq!(one(b"FOUND 2 0\r\n\r\n"), (Reply::Found(2, Vec::new()), 13));
        assert_eq!(one(b"OK 4\r\n---\n\r\n").0, Reply::Ok(b"---\n".to_vec()));
        assert_eq!(one(b"DELETED\r\n").0, Reply::Deleted);
        assert_eq!(one(b"USING jobs\r\n").0, Reply::Using("jobs".into()));
        assert_eq!(one(b"WATCHING 2\r\n").0, Reply::Watching(2));
        assert_eq!(one(b"TIMED_OUT\r\n").0, Reply::TimedOut);
        assert_eq!(one(b"DEADLINE_SOON\r\n").0, Reply::DeadlineSoon);
        assert_eq!(one(b"NOT_FOUND\r\n").0, Reply::NotFound);
        assert_eq!(
            one(b"JOB_TOO_BIG\r\n").0,
            Reply::Other("JOB_TOO_BIG".into())
        );
    }

    #[test]
    fn a_body_may_hold_crlf() {
        assert_eq!(
            one(b"RESERVED 1 4\r\n\r\n\r\n\r\n").0,
            Reply::Reserved(1, b"\r\n\r\n".to_vec())
        );
    }

    #[test]
    fn incomplete_replies_ask_for_more() {
        let whole = b"RESERVED 9 5\r\nhello\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode(b"INSERTED 1\r"), Ok(None));
    }

    #[test]
    fn malformed_replies_are_errors() {
        let cases: [(&[u8], &str); 6] = [
            (b"INSERTED x\r\n", "malformed number"),
            (b"INSERTED -1\r\n", "malformed number"),
            (b"RESERVED 1 5\r\nhelloXY", "does not end in"),
            (b"RESERVED 1 99999999999\r\n", "announces more than"),
            (b"OK \xff\r\n", "not ASCII"),
            (&[b'A'; LINE_BYTES_MAX + 2], "longer than 1024"),
        ];
        for (bytes, needle) in cases {
            let e = decode(bytes).unwrap_err();
            assert!(e.0.contains(needle), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn commands_are_encoded_as_the_protocol_says() {
        let mut out = Vec::new();
        put(&mut out, 1024, b"ab");
        reserve_now(&mut out);
        delete(&mut out, 42);
        assert_eq!(
            out,
            b"put 1024 0 60 2\r\nab\r\nreserve-with-timeout 0\r\ndelete 42\r\n"
        );
    }
}
