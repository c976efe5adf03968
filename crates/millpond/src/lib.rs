//! millpond: a durable, disk-backed, log-structured queue engine.
//!
//! A [`Store`] is one directory owned by one process. It holds named
//! [`Queue`]s; each queue is an append-only, segmented log of messages, and
//! every message gets a 64-bit id that only grows.
//!
//! ```
//! use millpond::{Options, Store};
//!
//! # fn main() -> millpond::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), Options::default())?;
//! let jobs = store.queue("jobs")?;
//!
//! // Under the default durability, push returns once the message is on disk.
//! let id = jobs.push(b"resize image 42")?;
//! let ids = jobs.push_batch(&[b"a".as_slice(), b"b"])?;
//! assert_eq!(ids, id + 1..id + 3);
//!
//! let msg = jobs.read(id)?.expect("pushed above");
//! assert_eq!(msg.payload, b"resize image 42");
//! let all: Vec<_> = jobs.reader(id).collect::<Result<_, _>>()?;
//! assert_eq!(all.len(), 3);
//! store.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Durability.** Under [`Durability::Sync`] (the default) a push
//!   returns only after its bytes, and everything they depend on (earlier
//!   segments, a new segment's directory entry), are fsynced. Concurrent
//!   pushes share one write and one `fdatasync` (group commit).
//! - **Integrity.** Every record carries its length and a CRC-32; a reader
//!   never hands out bytes that fail their check. A torn tail (the partial
//!   last record left by a crash) is truncated on open and reported in the
//!   [`RecoveryReport`]. Damage in the interior of a segment is reported
//!   with file and offset; the valid records after it stay readable
//!   ([`RecoveryMode`] chooses whether opening fails or skips it).
//! - **Poisoning.** After a failed write or fsync the queue refuses writes
//!   with [`Error::Poisoned`], naming the original failure: the page cache
//!   can no longer be trusted. Reopening recovers from what is on disk.
//! - **Crash-consistent file operations.** New segment files are fsynced
//!   and their directory fsynced before any push into them returns; state
//!   files are replaced atomically (temporary file, fsync, rename, fsync of
//!   the directory).
//! - **Bounded recovery.** Opening after a clean shutdown scans nothing;
//!   after a crash, only what the newest segment gained since its index
//!   file was last written.
//! - **One owner.** The store directory is locked with an OS file lock; a
//!   second opener gets [`Error::Locked`] naming the lock file.
//!
//! # Durability modes
//!
//! | mode | push returns after | lost by a process crash | lost by a power cut |
//! |---|---|---|---|
//! | [`Durability::Sync`] | write + fdatasync (shared) | nothing | nothing |
//! | [`Durability::Interval`] | write (shared) | nothing | at most the last interval |
//! | [`Durability::Buffered`] | copy into a user-space buffer | the unwritten buffer | everything since the last [`Queue::flush`] |
//!
//! # Performance
//!
//! Under `Buffered`, pushes are gathered in user space and written in
//! chunks of `write_buffer_bytes`, so a push costs a memory copy and a CRC,
//! not a syscall. Under `Sync`, one thread is bound by the disk's fsync
//! rate; many threads share fsyncs and scale with their number until the
//! disk's bandwidth is the limit. Reads use a sparse index (one entry per
//! `index_interval_bytes`) and memory-map sealed segments. Figures and the
//! commands that produce them are in `docs/benchmarks.md`.
//!
//! # Untrusted input
//!
//! Every byte read from disk is checked before use: frames by their CRC,
//! headers and index files by theirs, and lengths against
//! `message_bytes_max` before anything is allocated. Decoders never panic
//! on arbitrary bytes (property-tested). Files written by a newer format
//! version are refused with [`Error::UnsupportedVersion`].
//!
//! # Testing with simulated faults
//!
//! All file I/O goes through the [`fs::Fs`] trait. [`fs::SimFs`] simulates
//! power cuts (unsynced data lost, torn writes, lost directory entries) and
//! injected `EIO`/`ENOSPC`; the test suite uses it to check the guarantees
//! above over many seeds.

#![deny(unsafe_code)]

mod clock;
mod compact;
mod error;
pub mod fs;
pub mod group;
pub mod log;
mod mmap;
mod name;
mod options;
mod queue;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use compact::{CompactReport, Retention};
pub use error::{Error, Result};
pub use group::{
    Backoff, Delivery, GroupOptions, GroupRecovery, GroupStats, MessageState, Peeked, StartAt,
};
pub use log::{DamagedRange, QueueRecovery, TornTail};
pub use name::{NAME_BYTES_MAX, validate_name};
pub use options::{Durability, MESSAGE_BYTES_LIMIT, Options, RecoveryMode};
pub use queue::{DEFAULT_GROUP, Group, LogStats, Message, PushOptions, Queue, Reader};
pub use store::{RecoveryReport, STORE_MAGIC, STORE_VERSION, Store};

#[cfg(test)]
mod send_sync {
    fn assert_clone_send_sync<T: Clone + Send + Sync>() {}

    #[test]
    fn handles_are_clone_send_sync() {
        assert_clone_send_sync::<crate::Store>();
        assert_clone_send_sync::<crate::Queue>();
        assert_clone_send_sync::<crate::Group>();
    }
}
