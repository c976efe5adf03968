//! Durations on the command line: an integer and a unit, `250us`, `50ms`,
//! `30s`, `5m`, `2h` (or `0`).

use std::time::Duration;

/// Parses a duration; use as a clap `value_parser`.
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits_len);
    let bad = || format!("expected a duration such as 50ms, 30s, 5m or 500us, got {text:?}");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long"))
    };
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(bad()),
    }
}

/// Formats a duration the way [`parse`] reads it (the largest exact unit).
pub fn display(d: Duration) -> String {
    if d.is_zero() {
        "0".to_owned()
    } else if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Whole milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "",
            "s",
            "10",
            "-1s",
            "1.5s",
            "10 s",
            "3d",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["0", "250us", "1500ms", "30s", "5m", "2h", "90s"] {
            assert_eq!(display(parse(text).unwrap()), text);
        }
    }
}
