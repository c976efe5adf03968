//! One client connection: a write buffer that collects pipelined commands
//! and a read buffer that a protocol's decoder takes replies from.
//!
//! Decoders are pure functions over bytes: `Ok(None)` means "not all of
//! the reply is here yet", `Ok(Some((reply, used)))` consumes `used`
//! bytes, `Err` means the bytes can never become a valid reply.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read or write may block before the client gives up: a
/// server that stops answering fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Most bytes a single reply may take (the read buffer never grows past
/// this plus one chunk).
pub const REPLY_BYTES_MAX: usize = 64 << 20;

/// Bytes that can never become a valid reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// What a decoder returns: a reply and the bytes it used, or `None` when
/// more bytes are needed.
pub type Decoded<T> = Result<Option<(T, usize)>, DecodeError>;

/// A TCP connection with buffered, pipelined commands.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    start: usize,
}

impl Conn {
    /// Connects to `addr` with Nagle off (commands are flushed whole).
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            buf: Vec::with_capacity(READ_CHUNK_BYTES),
            start: 0,
        })
    }

    /// The buffer commands are written into; [`Conn::flush`] sends it.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Sends every buffered command in one write (as far as the kernel
    /// takes it).
    ///
    /// # Errors
    ///
    /// The write failed or timed out.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next reply with `decode`.
    ///
    /// # Errors
    ///
    /// The server closed the connection or sent bytes `decode` refuses;
    /// a read failed or timed out.
    pub fn reply<T>(&mut self, decode: impl Fn(&[u8]) -> Decoded<T>) -> io::Result<T> {
        loop {
            match decode(&self.buf[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => self.fill()?,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Reads more bytes from the socket.
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() > REPLY_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a reply is longer than {REPLY_BYTES_MAX} bytes"),
            ));
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK_BYTES, 0);
        let n = loop {
            match self.stream.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }
}

/// Finds the first `\r\n` in `bytes`: the index of `\r`.
pub fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// Parses a decimal number made only of ASCII digits (no sign, no
/// spaces, at most 20 digits).
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1x", b"1.0"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn crlf_is_found_whole() {
        assert_eq!(find_crlf(b"OK\r\n"), Some(2));
        assert_eq!(find_crlf(b"OK\r"), None);
        assert_eq!(find_crlf(b"O\nK\r\n"), Some(3));
    }
}
