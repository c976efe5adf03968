//! Output helpers: JSON values for messages, human-readable sizes, counts,
//! rates and times, and plain-text tables.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use indicatif::{HumanBytes, HumanCount, HumanDuration};
use serde_json::{Map, Value};

/// Puts a payload into a JSON object: as `payload` when it is UTF-8, else
/// as `payload_b64` (standard base64 with padding).
pub fn put_payload(object: &mut Map<String, Value>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => object.insert("payload".into(), Value::from(text)),
        Err(_) => object.insert(
            "payload_b64".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    };
}

/// Decodes a `payload_b64` value.
///
/// # Errors
///
/// A message when the text is not standard base64.
pub fn decode_b64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("payload_b64 is not standard base64: {e}"))
}

/// Writes one JSON value and a newline to stdout.
///
/// # Errors
///
/// A failed write (for example a closed pipe).
pub fn json_line(value: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes one JSON value, pretty-printed, to stdout.
///
/// # Errors
///
/// A failed write.
pub fn json_document(value: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `1.50 MiB`.
pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    HumanCount(n).to_string()
}

/// `n noun` or `n nouns`, with thousands separators.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", count(n))
    }
}

/// A rate per second: `12,345/s`.
pub fn per_second(n: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return "-".to_owned();
    }
    format!("{}/s", count((n as f64 / seconds).round() as u64))
}

/// Bytes per second: `12.3 MiB/s`.
pub fn bytes_per_second(n: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return "-".to_owned();
    }
    format!("{}/s", bytes((n as f64 / seconds).round() as u64))
}

/// A short duration: `350 µs`, `12.5 ms`, `3.20 s`, `5 minutes`.
pub fn duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.1} ms", micros as f64 / 1e3)
    } else if d < Duration::from_secs(60) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        HumanDuration(d).to_string()
    }
}

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A unix-ms time relative to now: `in 25 seconds`, `3 minutes ago`, `now`.
pub fn relative(time_ms: u64, now_ms: u64) -> String {
    if time_ms > now_ms {
        format!(
            "in {}",
            HumanDuration(Duration::from_millis(time_ms - now_ms))
        )
    } else if now_ms - time_ms < 1000 {
        "now".to_owned()
    } else {
        format!(
            "{} ago",
            HumanDuration(Duration::from_millis(now_ms - time_ms))
        )
    }
}

/// A unix-ms time as UTC in ISO 8601: `2023-11-14T22:13:20.000Z`.
pub fn iso_utc(time_ms: u64) -> String {
    let days = (time_ms / 86_400_000) as i64;
    let ms_of_day = time_ms % 86_400_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// A payload for people: the text if it is UTF-8 (cut at `max_chars`),
/// else a note.
pub fn preview(payload: &[u8], max_chars: usize) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            let mut out: String = text
                .chars()
                .take(max_chars)
                .map(|c| if c.is_control() { '·' } else { c })
                .collect();
            if text.chars().count() > max_chars {
                out.push('…');
            }
            out
        }
        Err(_) => format!("<{} of binary>", bytes(payload.len() as u64)),
    }
}

/// A plain-text table: a header row, then rows; numbers right-aligned.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; `>` before a name right-aligns it.
    pub fn new(columns: &[&str]) -> Table {
        Table {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('>').to_owned())
                .collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "table row width");
        self.rows.push(cells);
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                std::iter::once(&self.header[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = widths[c] - cell.chars().count();
                if self.right[c] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_choose_text_or_base64() {
        let mut m = Map::new();
        put_payload(&mut m, b"hello");
        assert_eq!(m["payload"], "hello");
        let mut m = Map::new();
        put_payload(&mut m, &[0xff, 0x00, 0x80]);
        assert_eq!(m["payload_b64"], "/wCA");
        assert_eq!(decode_b64("/wCA").unwrap(), vec![0xff, 0x00, 0x80]);
        assert!(decode_b64("***").is_err());
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["name", ">count"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long-name".into(), "1,000".into()]);
        assert_eq!(
            t.render(),
            "name       count\na              1\nlong-name  1,000\n"
        );
    }

    #[test]
    fn human_numbers() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(2000, "message"), "2,000 messages");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(duration(Duration::from_micros(350)), "350 µs");
        assert_eq!(duration(Duration::from_millis(1500)), "1.50 s");
        assert_eq!(relative(1000, 1000), "now");
        assert!(relative(61_000, 1_000).starts_with("in "));
        assert!(relative(1_000, 61_000).ends_with(" ago"));
        assert_eq!(preview(b"abcdef", 3), "abc…");
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(preview(&[0xff; 4], 3), "<4 B of binary>");
    }
}
