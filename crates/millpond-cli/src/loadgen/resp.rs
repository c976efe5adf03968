//! RESP, the Redis serialization protocol (version 2), client side:
//! commands as arrays of bulk strings, and a decoder for every reply type.

use super::conn::{DecodeError, Decoded, find_crlf, parse_u64};

/// Longest simple-string, error or number line we accept.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest bulk string we accept (Redis's own `proto-max-bulk-len`
/// defaults to 512 MB; the load generator's replies are far smaller).
const BULK_BYTES_MAX: u64 = 16 << 20;
/// Most elements of one array we accept.
const ARRAY_LEN_MAX: u64 = 1 << 20;
/// Deepest nesting of arrays we accept (an `XREADGROUP` reply nests 4).
const DEPTH_MAX: usize = 8;

/// A RESP value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc` or the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` or the null array `*-1`.
    Array(Option<Vec<Value>>),
}

/// Appends a command: an array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Decodes one value from the front of `bytes`.
///
/// # Errors
///
/// An unknown type byte, a malformed or out-of-range length or number, a
/// bulk string not followed by `\r\n`, a line, bulk string, array or
/// nesting beyond the limits above.
pub fn decode(bytes: &[u8]) -> Decoded<Value> {
    decode_at(bytes, 0)
}

fn decode_at(bytes: &[u8], depth: usize) -> Decoded<Value> {
    if depth > DEPTH_MAX {
        return Err(DecodeError(format!(
            "arrays nested deeper than {DEPTH_MAX}"
        )));
    }
    let Some(end) = find_crlf(&bytes[..bytes.len().min(LINE_BYTES_MAX + 2)]) else {
        if bytes.len() >= LINE_BYTES_MAX + 2 {
            return Err(DecodeError(format!(
                "a reply line is longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        return Ok(None);
    };
    if end == 0 {
        return Err(DecodeError("an empty reply line".to_owned()));
    }
    let line = &bytes[1..end];
    let used = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    match bytes[0] {
        b'+' => Ok(Some((Value::Simple(text()), used))),
        b'-' => Ok(Some((Value::Error(text()), used))),
        b':' => {
            let n = parse_i64(line)
                .ok_or_else(|| DecodeError(format!("a malformed integer reply {:?}", text())))?;
            Ok(Some((Value::Int(n), used)))
        }
        b'$' => {
            let Some(len) = length(line, BULK_BYTES_MAX, "bulk string")? else {
                return Ok(Some((Value::Bulk(None), used)));
            };
            let len = usize::try_from(len).expect("at most BULK_BYTES_MAX");
            let rest = &bytes[used..];
            if rest.len() < len + 2 {
                return Ok(None);
            }
            if &rest[len..len + 2] != b"\r\n" {
                return Err(DecodeError(format!(
                    "a bulk string of {len} bytes does not end in \\r\\n"
                )));
            }
            Ok(Some((
                Value::Bulk(Some(rest[..len].to_vec())),
                used + len + 2,
            )))
        }
        b'*' => {
            let Some(len) = length(line, ARRAY_LEN_MAX, "array")? else {
                return Ok(Some((Value::Array(None), used)));
            };
            let len = usize::try_from(len).expect("at most ARRAY_LEN_MAX");
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = used;
            for _ in 0..len {
                let Some((item, n)) = decode_at(&bytes[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += n;
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        other => Err(DecodeError(format!(
            "a reply starts with {:?}, not one of + - : $ *",
            char::from(other)
        ))),
    }
}

/// A bulk or array length: `None` for `-1` (null).
fn length(line: &[u8], max: u64, what: &str) -> Result<Option<u64>, DecodeError> {
    if line == b"-1" {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(line);
    let len = parse_u64(line)
        .ok_or_else(|| DecodeError(format!("a malformed {what} length {text:?}")))?;
    if len > max {
        return Err(DecodeError(format!(
            "a {what} of {len} is longer than {max}"
        )));
    }
    Ok(Some(len))
}

fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let n = i64::try_from(parse_u64(digits)?).ok()?;
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> (Value, usize) {
        decode(bytes).unwrap().unwrap()
    }

    fn bulk(b: &[u8]) -> Value {
        Value::Bulk(Some(b.to_vec()))
    }

    #[test]
    fn decodes_each_type() {
        assert_eq!(one(b"+OK\r\n"), (Value::Simple("OK".into()), 5));
        assert_eq!(
            one(b"-BUSYGROUP Consumer Group name already exists\r\n").0,
            Value::Error("BUSYGROUP Consumer Group name already exists".into())
        );
        assert_eq!(one(b":-12\r\n").0, Value::Int(-12));
        assert_eq!(one(b"$3\r\na\r\n\r\n"), (bulk(b"a\r\n"), 9));
        assert_eq!(one(b"$-1\r\n").0, Value::Bulk(None));
        assert_eq!(one(b"*-1\r\n").0, Value::Array(None));
        assert_eq!(one(b"*0\r\n").0, Value::Array(Some(Vec::new())));
    }

    #[test]
    fn decodes_an_xreadgroup_reply() {
        let reply =
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$2\r\nhi\r\n";
        let (value, used) = one(reply);
        assert_eq!(used, reply.len());
        let entry = Value::Array(Some(vec![
            bulk(b"1-0"),
            Value::Array(Some(vec![bulk(b"f"), bulk(b"hi")])),
        ]));
        assert_eq!(
            value,
            Value::Array(Some(vec![Value::Array(Some(vec![
                bulk(b"s"),
                Value::Array(Some(vec![entry])),
            ]))]))
        );
    }

    #[test]
    fn incomplete_replies_ask_for_more() {
        let whole = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(one(whole).1, whole.len());
    }

    #[test]
    fn malformed_replies_are_errors() {
        let deep = b"*1\r\n".repeat(DEPTH_MAX + 2);
        let long = [b'+'; LINE_BYTES_MAX + 3];
        let cases: [(&[u8], &str); 9] = [
            (b"?x\r\n", "starts with '?'"),
            (b"\r\n", "empty reply line"),
            (b":1x\r\n", "malformed integer"),
            (b"$x\r\n", "malformed bulk string length"),
            (b"$-2\r\n", "malformed bulk string length"),
            (b"$2\r\nabcd", "does not end in"),
            (b"$999999999\r\n", "longer than"),
            (&deep, "nested deeper"),
            (&long, "longer than 65536"),
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
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"LPUSH", b"q", b""]);
        assert_eq!(out, b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$0\r\n\r\n");
    }
}
