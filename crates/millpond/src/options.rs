//! Store options: durability, recovery policy and limits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::fs::{Fs, RealFs};

/// The largest `message_bytes_max` accepted, and the length limit every
/// frame decoder applies (256 MiB).
pub const MESSAGE_BYTES_LIMIT: u32 = 256 << 20;

/// When a push (and later an ack) counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `push` returns only after the message and everything it depends on
    /// are on disk (`fdatasync`, plus a directory fsync when a segment file
    /// was created). Concurrent pushes from any number of threads share one
    /// write and one fsync (group commit). Loss window: none.
    #[default]
    Sync,
    /// `push` returns once the message reached the operating system (a
    /// `write` to the segment file, shared by concurrent pushes). A timer
    /// thread fsyncs what was written at most this long after it was
    /// written, whether or not more writes follow; with nothing unsynced it
    /// sleeps until the next write.
    /// Loss window: a power cut (not a process crash) loses at most the
    /// pushes of the last interval.
    Interval(Duration),
    /// Messages are gathered in user space and written in large chunks;
    /// fsync happens on [`Queue::flush`](crate::Queue::flush), when a
    /// segment is sealed, and on clean close. A consumer group's acks (and
    /// other records) are fsynced by [`Group::flush`](crate::Group::flush),
    /// checkpoints, compaction passes and clean close. A background thread also
    /// fsyncs the active segment every 8 MiB written, so that sealing it
    /// does not stall a push; this promises nothing (only `flush` does).
    /// Loss window: a process crash loses what was not yet written (up to
    /// four times `write_buffer_bytes` while a write is in progress); a
    /// power cut loses everything since the last flush.
    Buffered,
}

/// What recovery does when it finds a damaged record in the interior of a
/// segment (a record that fails its check, followed by valid records).
///
/// A torn tail, the last, partial record of the newest segment, is always
/// truncated and reported: it is the expected result of a crash during a
/// write, and no push of it ever returned under [`Durability::Sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open the queue; the error names the file and offset.
    #[default]
    Fail,
    /// Open, keep the damaged bytes where they are, skip them when reading,
    /// and list them in the [`RecoveryReport`](crate::RecoveryReport).
    Skip,
}

/// Options for [`Store::open`](crate::Store::open), a builder.
///
/// ```
/// use millpond::{Durability, Options};
/// use std::time::Duration;
///
/// let options = Options::default()
///     .durability(Durability::Interval(Duration::from_millis(50)))
///     .segment_bytes_max(16 << 20);
/// assert_eq!(options.segment_bytes_max_get(), 16 << 20);
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) segment_bytes_max: u64,
    pub(crate) preallocate_bytes: u64,
    pub(crate) message_bytes_max: u32,
    pub(crate) index_interval_bytes: u32,
    pub(crate) write_buffer_bytes: usize,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) compact_interval: Option<Duration>,
    pub(crate) copy_forward_percent: u8,
    pub(crate) compact_journal_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Sync,
            recovery_mode: RecoveryMode::Fail,
            segment_bytes_max: 64 << 20,
            preallocate_bytes: 1 << 20,
            message_bytes_max: 16 << 20,
            index_interval_bytes: 4096,
            write_buffer_bytes: 1 << 20,
            fs: Arc::new(RealFs),
            clock: Arc::new(SystemClock),
            compact_interval: Some(Duration::from_secs(5)),
            copy_forward_percent: 25,
            compact_journal_bytes: 16 << 10,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("recovery_mode", &self.recovery_mode)
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("preallocate_bytes", &self.preallocate_bytes)
            .field("message_bytes_max", &self.message_bytes_max)
            .field("index_interval_bytes", &self.index_interval_bytes)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("fs", &self.fs)
            .field("clock", &self.clock)
            .field("compact_interval", &self.compact_interval)
            .field("copy_forward_percent", &self.copy_forward_percent)
            .field("compact_journal_bytes", &self.compact_journal_bytes)
            .finish()
    }
}

impl Options {
    /// Durability of pushes. Default: [`Durability::Sync`].
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// What recovery does with interior corruption. Default:
    /// [`RecoveryMode::Fail`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Options {
        self.recovery_mode = mode;
        self
    }

    /// Size at which a segment file is sealed and a new one started.
    /// Default: 64 MiB. Range: 4 KiB to 1 GiB.
    pub fn segment_bytes_max(mut self, bytes: u64) -> Options {
        self.segment_bytes_max = bytes;
        self
    }

    /// How far past its last frame the active segment file (and each
    /// group journal) is extended with written zeros, at most, so that the
    /// `fdatasync` after a small append overwrites blocks the file already
    /// has instead of also committing a new file size (on ext4 and XFS a
    /// second write to the file system's journal). Each extension reaches
    /// as far ahead as the file is long, from 64 KiB up to this limit, so
    /// a rarely written queue holds 64 KiB of zeros. The zeros are cut off
    /// when a segment is sealed and when the store closes cleanly.
    /// Only under [`Durability::Sync`]: under `Interval` and `Buffered` a
    /// size change is committed once per fsync, not once per push, and
    /// writing zeros first would double the page-cache writes.
    /// Default: 1 MiB; 0 appends without preallocating. Range: 0 to 1 GiB.
    pub fn preallocate_bytes(mut self, bytes: u64) -> Options {
        self.preallocate_bytes = bytes;
        self
    }

    /// Largest accepted payload. Default: 16 MiB. Range: 1 byte to 256 MiB.
    /// A message larger than `segment_bytes_max` gets a segment of its own.
    pub fn message_bytes_max(mut self, bytes: u32) -> Options {
        self.message_bytes_max = bytes;
        self
    }

    /// Distance in bytes between two entries of a segment's sparse index:
    /// a read by id scans at most about this many bytes after an index
    /// lookup. Default: 4 KiB. Range: 64 bytes to 16 MiB.
    pub fn index_interval_bytes(mut self, bytes: u32) -> Options {
        self.index_interval_bytes = bytes;
        self
    }

    /// Under [`Durability::Buffered`], how many bytes of frames are gathered
    /// in user space before they are written to the segment file. Default:
    /// 1 MiB. Range: 4 KiB to 256 MiB.
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Options {
        self.write_buffer_bytes = bytes;
        self
    }

    /// The file system to use. Default: [`RealFs`]. Tests pass a
    /// [`MemFs`](crate::fs::MemFs) or a [`SimFs`](crate::fs::SimFs).
    pub fn fs(mut self, fs: Arc<dyn Fs>) -> Options {
        self.fs = fs;
        self
    }

    /// The clock for timestamps, leases and delays. Default:
    /// [`SystemClock`]. Tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Options {
        self.clock = clock;
        self
    }

    /// How often the background compactor runs a pass over every queue;
    /// `None` turns it off (then only
    /// [`Store::compact_now`](crate::Store::compact_now) compacts). Default:
    /// every 5 s. Range: at least 1 ms.
    pub fn compact_interval(mut self, interval: Option<Duration>) -> Options {
        self.compact_interval = interval;
        self
    }

    /// A sealed segment whose live bytes fall below this percentage of its
    /// size is rewritten with only its live frames. Default: 25. Range:
    /// 0 (never) to 100.
    pub fn copy_forward_percent(mut self, percent: u8) -> Options {
        self.copy_forward_percent = percent;
        self
    }

    /// A compaction pass replaces every group journal of at least this many
    /// bytes by a checkpoint, giving back the records of finished messages
    /// (a journal is otherwise checkpointed when it reaches the group's
    /// `checkpoint_journal_bytes`, 4 MiB by default, which a quiet group may
    /// never reach). Default: 16 KiB. `u64::MAX` turns it off.
    pub fn compact_journal_bytes(mut self, bytes: u64) -> Options {
        self.compact_journal_bytes = bytes;
        self
    }

    /// The configured segment size limit.
    pub fn segment_bytes_max_get(&self) -> u64 {
        self.segment_bytes_max
    }

    /// The configured durability.
    pub fn durability_get(&self) -> Durability {
        self.durability
    }

    pub(crate) fn validate(&self) -> Result<()> {
        fn bad(option: &'static str, reason: String) -> Result<()> {
            Err(Error::InvalidOption { option, reason })
        }
        if !(4096..=1 << 30).contains(&self.segment_bytes_max) {
            return bad(
                "segment_bytes_max",
                format!("{} is outside 4 KiB..=1 GiB", self.segment_bytes_max),
            );
        }
        if self.preallocate_bytes > 1 << 30 {
            return bad(
                "preallocate_bytes",
                format!("{} is above 1 GiB", self.preallocate_bytes),
            );
        }
        if self.message_bytes_max == 0 || self.message_bytes_max > 256 << 20 {
            return bad(
                "message_bytes_max",
                format!("{} is outside 1..=256 MiB", self.message_bytes_max),
            );
        }
        if !(64..=16 << 20).contains(&self.index_interval_bytes) {
            return bad(
                "index_interval_bytes",
                format!("{} is outside 64..=16 MiB", self.index_interval_bytes),
            );
        }
        if !(4096..=256 << 20).contains(&self.write_buffer_bytes) {
            return bad(
                "write_buffer_bytes",
                format!("{} is outside 4 KiB..=256 MiB", self.write_buffer_bytes),
            );
        }
        if self.copy_forward_percent > 100 {
            return bad(
                "copy_forward_percent",
                format!("{} is above 100", self.copy_forward_percent),
            );
        }
        if self.compact_interval.is_some_and(|d| d.is_zero()) {
            return bad(
                "compact_interval",
                "Some(0) would spin; use None to turn it off".into(),
            );
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("durability", "Interval(0) would spin; use Sync".into());
        }
        Ok(())
    }
}
