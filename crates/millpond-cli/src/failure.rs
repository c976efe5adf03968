//! What a command that stops reports, and the exit code it ends with.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | damaged data: `verify` found damage, `import` refused a damaged file, a command met bytes that fail their checksum, `demo` read back something else than it pushed |
//! | 2 | error: bad arguments, I/O, a name or id that does not exist, a message that is not reserved |
//! | 3 | the store is locked by another process |
//! | 4 | nothing to do: `reserve` or `peek` found no message |

use std::fmt;

/// An error that stops a command. Errors of the engine
/// ([`millpond::Error`]) and [`Failure`]s keep their type so the exit code
/// can be chosen from it.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Exit code: success.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code: damaged data found.
pub const EXIT_DAMAGED: u8 = 1;
/// Exit code: an error.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: the store is locked by another process.
pub const EXIT_LOCKED: u8 = 3;
/// Exit code: no message.
pub const EXIT_EMPTY: u8 = 4;

/// The exit codes, for `--help` (keep in step with the table above and the
/// README).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  damaged data: verify found damage, import refused a damaged file, a
     command met bytes that fail their checksum (run `millpond verify`)
  2  error: bad arguments, I/O, an unknown queue, group or id, a message
     that is not reserved
  3  the store is locked by another process (the message names the lock file)
  4  nothing to do: reserve or peek found no message";

/// An error with its own exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What happened and what to do.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error with exit code 2.
pub fn error(message: impl Into<String>) -> Error {
    Box::new(Failure {
        code: EXIT_ERROR,
        message: message.into(),
    })
}

/// Damaged data: exit code 1.
pub fn damaged(message: impl Into<String>) -> Error {
    Box::new(Failure {
        code: EXIT_DAMAGED,
        message: message.into(),
    })
}

/// The exit code of an error and the text to print for it.
pub fn classify(e: &Error) -> (u8, String) {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return (f.code, f.message.clone());
    }
    if let Some(m) = e.downcast_ref::<millpond::Error>() {
        return match m {
            millpond::Error::Locked { .. } => (EXIT_LOCKED, m.to_string()),
            millpond::Error::Corruption { .. } => (
                EXIT_DAMAGED,
                format!(
                    "{m}\nhint: `millpond verify` reports every damaged range; \
                     `millpond repair` moves them aside into quarantine files"
                ),
            ),
            millpond::Error::NotReserved { id, .. } => (
                EXIT_ERROR,
                format!(
                    "{m}: its lease ran out, it was settled already, or it was never \
                     reserved; `millpond peek {id}` shows where it is"
                ),
            ),
            _ => (EXIT_ERROR, m.to_string()),
        };
    }
    (EXIT_ERROR, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn engine_errors_map_to_their_codes() {
        let locked: Error = Box::new(millpond::Error::Locked {
            path: PathBuf::from("/s/LOCK"),
        });
        let (code, text) = classify(&locked);
        assert_eq!(code, EXIT_LOCKED);
        assert!(text.contains("/s/LOCK"), "{text}");
        let corrupt: Error = Box::new(millpond::Error::Corruption {
            path: PathBuf::from("/s/x.seg"),
            offset: 99,
            detail: "bad".into(),
        });
        let (code, text) = classify(&corrupt);
        assert_eq!(code, EXIT_DAMAGED);
        assert!(
            text.contains("offset 99") && text.contains("repair"),
            "{text}"
        );
        let not_reserved: Error = Box::new(millpond::Error::NotReserved {
            group: "default".into(),
            id: 7,
        });
        let (code, text) = classify(&not_reserved);
        assert_eq!(code, EXIT_ERROR);
        assert!(
            text.starts_with("message 7 is not reserved in group default")
                && text.contains("`millpond peek 7`"),
            "{text}"
        );
        assert_eq!(classify(&error("x")).0, EXIT_ERROR);
        assert_eq!(classify(&damaged("x")).0, EXIT_DAMAGED);
        assert_eq!(
            classify(&Error::from("plain")),
            (EXIT_ERROR, "plain".into())
        );
    }
}
