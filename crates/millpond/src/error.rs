//! The one error type of the engine.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Results of millpond operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by cause.
///
/// Caller mistakes (bad names, oversize messages) and trouble on disk
/// (I/O failures, corruption) are errors; broken internal invariants are
/// panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The disk is full (`ENOSPC`). Data written before is intact; the
    /// queue refuses writes until reopened.
    #[error("disk full while {op} {path}: free space, then reopen the store")]
    DiskFull {
        /// What the engine was doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
    },
    /// Another owner holds the store's lock file.
    #[error(
        "store is locked by another process (lock file {path}); stop that process or open another directory"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A queue or group name breaks a naming rule.
    #[error("invalid name {name:?}: {rule}")]
    InvalidName {
        /// The name as given (lossily printed).
        name: String,
        /// Which rule it breaks.
        rule: &'static str,
    },
    /// A message is larger than `message_bytes_max`.
    #[error("message of {size} bytes exceeds message_bytes_max ({max} bytes)")]
    MessageTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The configured limit.
        max: u32,
    },
    /// An earlier write or fsync failed, so the queue refuses writes: the
    /// page cache can no longer be trusted. Reopen the store to recover from
    /// what is on disk.
    #[error("queue {queue} refuses writes since an earlier failure: {cause}; reopen the store")]
    Poisoned {
        /// The queue.
        queue: String,
        /// The original failure.
        cause: Arc<str>,
    },
    /// Bytes on disk fail their check.
    #[error("corrupt data in {path} at offset {offset}: {detail}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage within the file.
        offset: u64,
        /// What failed, with expected and found values where known.
        detail: String,
    },
    /// A file was written by a newer version of millpond.
    #[error(
        "{path} has format version {found}, this build reads up to {supported}: upgrade millpond"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An option is out of its allowed range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The id is not reserved by this group (never delivered, already
    /// settled, lease expired, or unknown).
    #[error("message {id} is not reserved in group {group}")]
    NotReserved {
        /// The group.
        group: String,
        /// The id.
        id: u64,
    },
    /// The id is not buried (or delayed) in this group, so it cannot be
    /// kicked.
    #[error("message {id} is not buried or delayed in group {group}")]
    NotBuried {
        /// The group.
        group: String,
        /// The id.
        id: u64,
    },
    /// A lease of zero or longer than the maximum.
    #[error("invalid lease {lease:?}: {reason}")]
    InvalidLease {
        /// The lease asked for.
        lease: std::time::Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The queue has handed out every id it can (the next would be
    /// `u64::MAX`); nothing was written.
    #[error("queue {queue} has used up its ids: no message can be pushed")]
    IdsExhausted {
        /// The queue.
        queue: String,
    },
    /// The store or queue was closed.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path,
    /// turning `ENOSPC` into [`Error::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            Error::DiskFull { op, path }
        } else {
            Error::Io { op, path, source }
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// Whether this error reports damaged bytes on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}

/// Extension to attach an operation and path to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
