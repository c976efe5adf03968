//! The `--durability` argument, shared by every subcommand that writes:
//! `sync`, `interval:<duration>` (e.g. `interval:50ms`) or `buffered`.

use millpond::Durability;

use crate::duration;

/// What `--durability` accepts, for help texts.
pub const VALUES: &str = "sync|interval:<n>(us|ms|s|m|h)|buffered";

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
            let interval = duration::parse(interval)?;
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
        Durability::Interval(d) => format!("interval:{}", duration::display(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
