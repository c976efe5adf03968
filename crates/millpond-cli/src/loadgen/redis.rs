//! Redis as a job queue, the two ways people use it:
//!
//! - a list with the reliable-queue pattern: `LPUSH` to put, `LMOVE`
//!   from the queue to a processing list to reserve (so a crashed worker's
//!   job stays visible there), `LREM` from the processing list to ack;
//! - a stream with a consumer group: `XADD` to put, `XREADGROUP ... >` to
//!   reserve (the entry stays pending until acked), `XACK` to ack. Acked
//!   entries stay in the stream (nothing trims it during a run).

use std::io;

use super::Session;
use super::conn::Conn;
use super::resp::{self, Value};

/// The consumer group of the stream mode.
const STREAM_GROUP: &[u8] = b"millpond-bench";

fn unexpected(command: &str, reply: &Value) -> io::Error {
    io::Error::other(format!("redis protocol: {command} got {reply:?}"))
}

/// Checks the server speaks RESP: `PING` answers `+PONG`.
fn ping(conn: &mut Conn) -> io::Result<()> {
    resp::command(conn.out(), &[b"PING"]);
    conn.flush()?;
    match conn.reply(resp::decode)? {
        Value::Simple(s) if s == "PONG" => Ok(()),
        other => Err(unexpected("PING", &other)),
    }
}

/// A client of the list pattern.
#[derive(Debug)]
pub struct RedisList {
    conn: Conn,
    key: Vec<u8>,
    processing_key: Vec<u8>,
    /// Payloads moved to the processing list by the last reserve batch.
    taken: Vec<Vec<u8>>,
}

impl RedisList {
    /// A client of the list `key`, with `key:processing` as its
    /// processing list.
    ///
    /// # Errors
    ///
    /// I/O; a server that does not answer `PING` with `PONG`.
    pub fn open(mut conn: Conn, key: &str) -> io::Result<RedisList> {
        ping(&mut conn)?;
        Ok(RedisList {
            conn,
            key: key.as_bytes().to_vec(),
            processing_key: format!("{key}:processing").into_bytes(),
            taken: Vec::new(),
        })
    }
}

impl Session for RedisList {
    fn put(&mut self, bodies: &[Vec<u8>], done: &mut dyn FnMut()) -> io::Result<()> {
        for body in bodies {
            resp::command(self.conn.out(), &[b"LPUSH", &self.key, body]);
        }
        self.conn.flush()?;
        for _ in bodies {
            match self.conn.reply(resp::decode)? {
                Value::Int(n) if n > 0 => done(),
                other => return Err(unexpected("LPUSH", &other)),
            }
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> io::Result<usize> {
        self.taken.clear();
        for _ in 0..n {
            resp::command(
                self.conn.out(),
                &[b"LMOVE", &self.key, &self.processing_key, b"RIGHT", b"LEFT"],
            );
        }
        self.conn.flush()?;
        for _ in 0..n {
            match self.conn.reply(resp::decode)? {
                Value::Bulk(Some(payload)) => self.taken.push(payload),
                Value::Bulk(None) => {}
                other => return Err(unexpected("LMOVE", &other)),
            }
        }
        Ok(self.taken.len())
    }

    fn settle(&mut self, done: &mut dyn FnMut()) -> io::Result<()> {
        for payload in &self.taken {
            resp::command(
                self.conn.out(),
                &[b"LREM", &self.processing_key, b"1", payload],
            );
        }
        self.conn.flush()?;
        for _ in 0..self.taken.len() {
            match self.conn.reply(resp::decode)? {
                Value::Int(1) => done(),
                other => return Err(unexpected("LREM", &other)),
            }
        }
        self.taken.clear();
        Ok(())
    }
}

/// A client of the stream pattern.
#[derive(Debug)]
pub struct RedisStream {
    conn: Conn,
    key: Vec<u8>,
    consumer: Vec<u8>,
    /// Entry ids read by the last reserve batch.
    taken: Vec<Vec<u8>>,
}

impl RedisStream {
    /// A client of the stream `key` as consumer `c<client>` of the group
    /// `millpond-bench`, which it creates (with the stream) unless it
    /// exists. The group starts at the stream's beginning, so entries put
    /// by an earlier run are read.
    ///
    /// # Errors
    ///
    /// I/O; a server that does not answer `PING` with `PONG` or refuses
    /// to create the group for another reason than that it exists.
    pub fn open(mut conn: Conn, key: &str, client: usize) -> io::Result<RedisStream> {
        ping(&mut conn)?;
        let key = key.as_bytes().to_vec();
        resp::command(
            conn.out(),
            &[b"XGROUP", b"CREATE", &key, STREAM_GROUP, b"0", b"MKSTREAM"],
        );
        conn.flush()?;
        match conn.reply(resp::decode)? {
            Value::Simple(s) if s == "OK" => {}
            Value::Error(e) if e.starts_with("BUSYGROUP") => {}
            other => return Err(unexpected("XGROUP CREATE", &other)),
        }
        Ok(RedisStream {
            conn,
            key,
            consumer: format!("c{client}").into_bytes(),
            taken: Vec::new(),
        })
    }
}

/// The entry id in an `XREADGROUP ... COUNT 1` reply, `None` for no entry.
fn entry_id(reply: Value) -> Result<Option<Vec<u8>>, Value> {
    let Value::Array(Some(streams)) = reply else {
        return match reply {
            Value::Array(None) | Value::Bulk(None) => Ok(None),
            other => Err(other),
        };
    };
    let entry = match streams.as_slice() {
        [Value::Array(Some(stream))] => match stream.as_slice() {
            [_, Value::Array(Some(entries))] => match entries.as_slice() {
                [] => return Ok(None),
                [Value::Array(Some(entry))] => entry.first().cloned(),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match entry {
        Some(Value::Bulk(Some(id))) => Ok(Some(id)),
        _ => Err(Value::Array(Some(streams))),
    }
}

impl Session for RedisStream {
    fn put(&mut self, bodies: &[Vec<u8>], done: &mut dyn FnMut()) -> io::Result<()> {
        for body in bodies {
            resp::command(self.conn.out(), &[b"XADD", &self.key, b"*", b"d", body]);
        }
        self.conn.flush()?;
        for _ in bodies {
            match self.conn.reply(resp::decode)? {
                Value::Bulk(Some(_)) => done(),
                other => return Err(unexpected("XADD", &other)),
            }
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> io::Result<usize> {
        self.taken.clear();
        for _ in 0..n {
            resp::command(
                self.conn.out(),
                &[
                    b"XREADGROUP",
                    b"GROUP",
                    STREAM_GROUP,
                    &self.consumer,
                    b"COUNT",
                    b"1",
                    b"STREAMS",
                    &self.key,
                    b">",
                ],
            );
        }
        self.conn.flush()?;
        for _ in 0..n {
            match entry_id(self.conn.reply(resp::decode)?) {
                Ok(Some(id)) => self.taken.push(id),
                Ok(None) => {}
                Err(other) => return Err(unexpected("XREADGROUP", &other)),
            }
        }
        Ok(self.taken.len())
    }

    fn settle(&mut self, done: &mut dyn FnMut()) -> io::Result<()> {
        for id in &self.taken {
            resp::command(self.conn.out(), &[b"XACK", &self.key, STREAM_GROUP, id]);
        }
        self.conn.flush()?;
        for _ in 0..self.taken.len() {
            match self.conn.reply(resp::decode)? {
                Value::Int(1) => done(),
                other => return Err(unexpected("XACK", &other)),
            }
        }
        self.taken.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::Bulk(Some(b.to_vec()))
    }

    #[test]
    fn entry_id_of_xreadgroup_replies() {
        let reply = Value::Array(Some(vec![Value::Array(Some(vec![
            bulk(b"s"),
            Value::Array(Some(vec![Value::Array(Some(vec![
                bulk(b"5-1"),
                Value::Array(Some(vec![bulk(b"d"), bulk(b"x")])),
            ]))])),
        ]))]));
        assert_eq!(entry_id(reply), Ok(Some(b"5-1".to_vec())));
        assert_eq!(entry_id(Value::Array(None)), Ok(None));
        let no_entries = Value::Array(Some(vec![Value::Array(Some(vec![
            bulk(b"s"),
            Value::Array(Some(Vec::new())),
        ]))]));
        assert_eq!(entry_id(no_entries), Ok(None));
        let error = Value::Error("NOGROUP".into());
        assert_eq!(entry_id(error.clone()), Err(error));
        let odd = Value::Array(Some(vec![Value::Int(1)]));
        assert_eq!(entry_id(odd.clone()), Err(odd));
    }
}
