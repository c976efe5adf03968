//! The `--durability` argument, shared by every subcommand that writes:
//! `sync`, `interval:<duration>` (e.g. `interval:50ms`) or `buffered`.

use std::time::Duration;

use millpond::Durability;

/// What `--durability` accepts, for help texts.
pub const VALUES: &str = "sync|interval:<n>(us|ms|s)|buffered";

/// Parses a `--durability` value; use as a clap `value_parser`.
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse(text: &str) -> Result<Durability, String> {
    match text {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => {
            let Some(interval) = text.strip_prefix("interval:") else {
                return Err(format!("expected {VALUES}, got {text:?}"));
            };
            let interval = parse_duration(interval)?;
            if interval.is_zero() {
                return Err("the interval must be longer than zero; use sync".to_owned());
            }
            Ok(Durability::Interval(interval))
        }
    }
}

/// Formats a durability the way [`parse`] reads it.
pub fn display(durability: Durability) -> String {
    match durability {
        Durability::Sync => "sync".to_owned(),
        Durability::Buffered => "buffered".to_owned(),
        Durability::Interval(d) => format!("interval:{}", display_duration(d)),
    }
}

/// Parses `<integer>` followed by `us`, `ms` or `s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits_len);
    let bad = || format!("expected a duration such as 50ms, 2s or 500us, got {text:?}");
    let number: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        _ => Err(bad()),
    }
}

fn display_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_mode() {
        assert_eq!(parse("sync"), Ok(Durability::Sync));
        assert_eq!(parse("buffered"), Ok(Durability::Buffered));
        assert_eq!(
            parse("interval:50ms"),
            Ok(Durability::Interval(Duration::from_millis(50)))
        );
        assert_eq!(
            parse("interval:2s"),
            Ok(Durability::Interval(Duration::from_secs(2)))
        );
        assert_eq!(
            parse("interval:250us"),
            Ok(Durability::Interval(Duration::from_micros(250)))
        );
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "",
            "Sync",
            "interval",
            "interval:",
            "interval:50",
            "interval:ms",
            "interval:0ms",
            "interval:-1s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "sync",
            "buffered",
            "interval:50ms",
            "interval:3s",
            "interval:1500us",
        ] {
            assert_eq!(display(parse(text).unwrap()), text);
        }
    }
}
