//! NATS JetStream as a job queue, client side of the NATS text protocol
//! (`INFO`, `CONNECT`, `PUB`, `SUB`, `MSG`, `HMSG`, `PING`/`PONG`):
//! a work-queue stream on file storage and a durable pull consumer with
//! explicit acks.
//!
//! - put: `PUB <stream> <inbox>` and wait for the stream's `PubAck`;
//! - reserve: a pull request `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`
//!   with `{"batch":1,"no_wait":true}`: a message, or status `404 No
//!   Messages` when none is pending;
//! - ack: `PUB <the message's $JS.ACK subject> <inbox>` with an empty body,
//!   waiting for the server's empty reply (an acknowledged ack, as
//!   `AckSync` in the official clients).
//!
//! Every reply comes to one subscription, `_INBOX.<client>.*`.

use std::io;

use super::Session;
use super::conn::{Conn, DecodeError, Decoded, find_crlf, parse_u64};

/// Longest protocol line we accept (`INFO` lines carry a JSON object of
/// server details, a few hundred bytes).
const LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest message we accept (nats-server's default `max_payload` is
/// 1 MiB).
const PAYLOAD_BYTES_MAX: u64 = 64 << 20;
/// The durable pull consumer. It allows up to 65,536 waiting pull
/// requests (the default, 512, is less than 64 clients pipelining 16) and
/// 1,000,000 unacked messages.
const CONSUMER: &str = "millpond-bench";

/// A message from a NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `INFO {...}`.
    Info,
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '...'`.
    Err(String),
    /// `MSG` or `HMSG`: a message for a subscription.
    Msg {
        /// Its reply subject (the ack subject of a JetStream message).
        reply: Option<String>,
        /// Header bytes (`HMSG` only; empty for `MSG`).
        headers: Vec<u8>,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// Decodes one server operation from the front of `bytes`.
///
/// # Errors
///
/// A line longer than [`LINE_BYTES_MAX`], an unknown operation, a
/// malformed `MSG`/`HMSG` line, sizes beyond [`PAYLOAD_BYTES_MAX`] or a
/// header size larger than the total, a payload not followed by `\r\n`.
pub fn decode(bytes: &[u8]) -> Decoded<Op> {
    let Some(end) = find_crlf(&bytes[..bytes.len().min(LINE_BYTES_MAX + 2)]) else {
        if bytes.len() >= LINE_BYTES_MAX + 2 {
            return Err(DecodeError(format!(
                "a line is longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&bytes[..end]);
    let used = end + 2;
    let mut words = line.split_ascii_whitespace();
    let op = words.next().unwrap_or("").to_ascii_uppercase();
    let words: Vec<&str> = words.collect();
    let op = match op.as_str() {
        "INFO" => Op::Info,
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "+OK" => Op::Ok,
        "-ERR" => Op::Err(line.trim_start()[4..].trim().to_owned()),
        "MSG" | "HMSG" => {
            let headed = op == "HMSG";
            let size = |word: &str| {
                parse_u64(word.as_bytes())
                    .filter(|&n| n <= PAYLOAD_BYTES_MAX)
                    .ok_or_else(|| DecodeError(format!("a malformed size in {line:?}")))
            };
            // MSG <subject> <sid> [reply] <size>
            // HMSG <subject> <sid> [reply] <header size> <total size>
            let sizes = if headed { 2 } else { 1 };
            if words.len() != 2 + sizes && words.len() != 3 + sizes {
                return Err(DecodeError(format!("a malformed {op} line {line:?}")));
            }
            let reply = (words.len() == 3 + sizes).then(|| words[2].to_owned());
            let total = size(words[words.len() - 1])?;
            let header_size = if headed {
                size(words[words.len() - 2])?
            } else {
                0
            };
            if header_size > total {
                return Err(DecodeError(format!(
                    "headers larger than the message in {line:?}"
                )));
            }
            let (total, header_size) = (total as usize, header_size as usize);
            let rest = &bytes[used..];
            if rest.len() < total + 2 {
                return Ok(None);
            }
            if &rest[total..total + 2] != b"\r\n" {
                return Err(DecodeError(format!(
                    "the payload of {line:?} does not end in \\r\\n"
                )));
            }
            let op = Op::Msg {
                reply,
                headers: rest[..header_size].to_vec(),
                payload: rest[header_size..total].to_vec(),
            };
            return Ok(Some((op, used + total + 2)));
        }
        _ => {
            return Err(DecodeError(format!(
                "an unknown operation {:?}",
                line.chars().take(80).collect::<String>()
            )));
        }
    };
    Ok(Some((op, used)))
}

/// The status code of `HMSG` headers (`NATS/1.0 404 No Messages`).
fn status(headers: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(headers).ok()?;
    let first = text.lines().next()?;
    first.strip_prefix("NATS/1.0 ")?.get(..3)?.parse().ok()
}

/// Appends `PUB <subject> <reply> <size>` and the payload.
pub fn publish(out: &mut Vec<u8>, subject: &str, reply: &str, payload: &[u8]) {
    out.extend_from_slice(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A load-generator client of a JetStream work-queue stream.
#[derive(Debug)]
pub struct Nats {
    conn: Conn,
    stream: String,
    inbox: String,
    /// Ack subjects of the messages of the last reserve batch.
    taken: Vec<String>,
}

impl Nats {
    /// Connects (CONNECT, PING), subscribes to its inbox, and creates the
    /// stream `name` (subject `name`, work-queue retention, file storage)
    /// and its durable pull consumer unless they exist.
    ///
    /// # Errors
    ///
    /// I/O; a server that is not NATS, has no JetStream, or refuses the
    /// stream or consumer.
    pub fn open(mut conn: Conn, name: &str, client: usize) -> io::Result<Nats> {
        match conn.reply(decode)? {
            Op::Info => {}
            other => return Err(unexpected("the greeting", &other)),
        }
        let inbox = format!("_INBOX.millpond-bench-{client}-{}", std::process::id());
        conn.out().extend_from_slice(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
                 \"no_responders\":true,\"lang\":\"millpond-bench\",\"version\":\"{}\"}}\r\n\
                 SUB {inbox}.* 1\r\nPING\r\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_bytes(),
        );
        conn.flush()?;
        loop {
            match conn.reply(decode)? {
                Op::Pong => break,
                Op::Ok | Op::Info => {}
                other => return Err(unexpected("CONNECT", &other)),
            }
        }
        let mut nats = Nats {
            conn,
            stream: name.to_owned(),
            inbox,
            taken: Vec::new(),
        };
        let stream = format!(
            "{{\"name\":\"{name}\",\"subjects\":[\"{name}\"],\"retention\":\"workqueue\",\
             \"storage\":\"file\"}}"
        );
        nats.request(&format!("$JS.API.STREAM.CREATE.{name}"), stream.as_bytes())?;
        let consumer = format!(
            "{{\"stream_name\":\"{name}\",\"config\":{{\"durable_name\":\"{CONSUMER}\",\
             \"ack_policy\":\"explicit\",\"ack_wait\":60000000000,\"max_ack_pending\":1000000,\
             \"max_waiting\":65536}}}}"
        );
        nats.request(
            &format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.{CONSUMER}"),
            consumer.as_bytes(),
        )?;
        Ok(nats)
    }

    /// A JetStream API request; fails on an error reply.
    fn request(&mut self, subject: &str, body: &[u8]) -> io::Result<()> {
        let reply = format!("{}.api", self.inbox);
        publish(self.conn.out(), subject, &reply, body);
        self.conn.flush()?;
        let (_, _, payload) = self.next_msg()?;
        if payload.windows(8).any(|w| w == b"\"error\":") {
            return Err(io::Error::other(format!(
                "nats: {subject} got {}",
                String::from_utf8_lossy(&payload)
            )));
        }
        Ok(())
    }

    /// The next message, answering pings and skipping `+OK` and `INFO`
    /// on the way.
    fn next_msg(&mut self) -> io::Result<(Option<String>, Vec<u8>, Vec<u8>)> {
        loop {
            match self.conn.reply(decode)? {
                Op::Msg {
                    reply,
                    headers,
                    payload,
                } => return Ok((reply, headers, payload)),
                Op::Ping => {
                    self.conn.out().extend_from_slice(b"PONG\r\n");
                    self.conn.flush()?;
                }
                Op::Ok | Op::Info | Op::Pong => {}
                Op::Err(e) => return Err(io::Error::other(format!("nats: -ERR {e}"))),
            }
        }
    }
}

fn unexpected(what: &str, op: &Op) -> io::Error {
    io::Error::other(format!("nats protocol: {what} got {op:?}"))
}

impl Session for Nats {
    fn put(&mut self, bodies: &[Vec<u8>], done: &mut dyn FnMut()) -> io::Result<()> {
        let reply = format!("{}.put", self.inbox);
        for body in bodies {
            publish(self.conn.out(), &self.stream, &reply, body);
        }
        self.conn.flush()?;
        for _ in bodies {
            let (_, headers, payload) = self.next_msg()?;
            if !headers.is_empty() || !payload.windows(6).any(|w| w == b"\"seq\":") {
                return Err(io::Error::other(format!(
                    "nats: a publish got {}{}",
                    String::from_utf8_lossy(&headers),
                    String::from_utf8_lossy(&payload)
                )));
            }
            done();
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> io::Result<usize> {
        self.taken.clear();
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{CONSUMER}", self.stream);
        let reply = format!("{}.next", self.inbox);
        for _ in 0..n {
            publish(
                self.conn.out(),
                &subject,
                &reply,
                br#"{"batch":1,"no_wait":true}"#,
            );
        }
        self.conn.flush()?;
        for _ in 0..n {
            let (ack, headers, _) = self.next_msg()?;
            match (ack, status(&headers)) {
                (Some(ack), None) if ack.starts_with("$JS.ACK.") => self.taken.push(ack),
                // No message pending; a pull request that timed out.
                (_, Some(404 | 408)) => {}
                (ack, _) => {
                    return Err(io::Error::other(format!(
                        "nats: a pull request got reply subject {ack:?}, headers {:?}",
                        String::from_utf8_lossy(&headers)
                    )));
                }
            }
        }
        Ok(self.taken.len())
    }

    fn settle(&mut self, done: &mut dyn FnMut()) -> io::Result<()> {
        let reply = format!("{}.ack", self.inbox);
        for ack in &self.taken {
            publish(self.conn.out(), ack, &reply, b"");
        }
        self.conn.flush()?;
        for _ in 0..self.taken.len() {
            let (_, headers, payload) = self.next_msg()?;
            if !headers.is_empty() || !payload.is_empty() {
                return Err(io::Error::other(format!(
                    "nats: an ack got {}{}",
                    String::from_utf8_lossy(&headers),
                    String::from_utf8_lossy(&payload)
                )));
            }
            done();
        }
        self.taken.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> (Op, usize) {
        decode(bytes).unwrap().unwrap()
    }

    #[test]
    fn decodes_each_operation() {
        assert_eq!(one(b"INFO {\"server_id\":\"x\"}\r\n").0, Op::Info);
        assert_eq!(one(b"PING\r\n"), (Op::Ping, 6));
        assert_eq!(one(b"PONG\r\n").0, Op::Pong);
        assert_eq!(one(b"+OK\r\n").0, Op::Ok);
        assert_eq!(
            one(b"-ERR 'Unknown Protocol Operation'\r\n").0,
            Op::Err("'Unknown Protocol Operation'".into())
        );
        // A PubAck: the reply field left empty (two spaces).
        let puback = b"MSG _INBOX.x.p 1  24\r\n{\"stream\":\"bn\", \"seq\":1}\r\n";
        assert_eq!(
            one(puback),
            (
                Op::Msg {
                    reply: None,
                    headers: Vec::new(),
                    payload: b"{\"stream\":\"bn\", \"seq\":1}".to_vec()
                },
                puback.len()
            )
        );
        let pulled = b"MSG bn 1 $JS.ACK.bn.w.1.1.1.179.1 5\r\nhello\r\n";
        assert_eq!(
            one(pulled).0,
            Op::Msg {
                reply: Some("$JS.ACK.bn.w.1.1.1.179.1".into()),
                headers: Vec::new(),
                payload: b"hello".to_vec()
            }
        );
        let none = b"HMSG _INBOX.x.n 1  28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n";
        let (op, used) = one(none);
        assert_eq!(used, none.len());
        let Op::Msg {
            headers, payload, ..
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(status(&headers), Some(404));
        assert!(payload.is_empty());
    }

    #[test]
    fn incomplete_operations_ask_for_more() {
        let whole = b"HMSG s 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(one(whole).1, whole.len());
    }

    #[test]
    fn malformed_operations_are_errors() {
        let long = [b'I'; LINE_BYTES_MAX + 2];
        let cases: [(&[u8], &str); 6] = [
            (b"HELLO\r\n", "unknown operation"),
            (b"MSG s\r\n", "malformed MSG line"),
            (b"MSG s 1 x\r\n", "malformed size"),
            (b"HMSG s 1 9 4\r\n", "headers larger"),
            (b"MSG s 1 2\r\nabcd", "does not end in"),
            (&long, "longer than"),
        ];
        for (bytes, needle) in cases {
            let e = decode(bytes).unwrap_err();
            assert!(
                e.0.contains(needle),
                "{:?}: {e}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn status_of_headers() {
        assert_eq!(status(b"NATS/1.0 408 Request Timeout\r\n\r\n"), Some(408));
        assert_eq!(status(b"NATS/1.0\r\nX: y\r\n\r\n"), None);
        assert_eq!(status(b""), None);
    }
}
