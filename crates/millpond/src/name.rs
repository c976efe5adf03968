//! Queue and group names: the rules that keep them safe as file names.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;

/// Checks a queue or group name: 1 to 128 bytes of `[A-Za-z0-9._-]`, and
/// neither `.` nor `..`.
///
/// # Errors
///
/// [`Error::InvalidName`] saying which rule the name breaks.
pub fn validate_name(name: &str) -> Result<()> {
    let rule = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > NAME_BYTES_MAX {
        Some("must be at most 128 bytes")
    } else if name == "." || name == ".." {
        Some("must not be `.` or `..`")
    } else if name.contains(['/', '\\']) {
        Some("must not contain a path separator")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only contain ASCII letters, digits, `.`, `_` and `-`")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(Error::InvalidName {
            name: name.chars().take(NAME_BYTES_MAX + 8).collect(),
            rule,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of(name: &str) -> &'static str {
        match validate_name(name) {
            Err(Error::InvalidName { rule, .. }) => rule,
            other => panic!("{name:?} gave {other:?}"),
        }
    }

    #[test]
    fn accepts_good_names() {
        for n in ["default", "a", "jobs.v2", "Q_1-x", &"x".repeat(128)] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(rule_of(""), "must not be empty");
        assert_eq!(rule_of(&"x".repeat(129)), "must be at most 128 bytes");
        assert_eq!(rule_of(".."), "must not be `.` or `..`");
        assert_eq!(rule_of("."), "must not be `.` or `..`");
        assert_eq!(rule_of("a/b"), "must not contain a path separator");
        assert_eq!(rule_of("a\\b"), "must not contain a path separator");
        assert_eq!(
            rule_of("a b"),
            "may only contain ASCII letters, digits, `.`, `_` and `-`"
        );
        assert_eq!(
            rule_of("é"),
            "may only contain ASCII letters, digits, `.`, `_` and `-`"
        );
    }
}
