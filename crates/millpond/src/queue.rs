//! The public handle of one queue.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::log::frame::Attrs;
use crate::log::{Log, LogReader, QueueRecovery, StoredFrame};
use crate::store::StoreInner;

/// A named queue: an append-only log of messages with ids that only grow.
///
/// Cheap to clone, `Send + Sync`: share it between threads freely. Under
/// [`Durability::Sync`](crate::Durability::Sync), concurrent pushes from
/// many threads share one write and one fsync.
#[derive(Clone, Debug)]
pub struct Queue {
    log: Arc<Log>,
    _store: Arc<StoreInner>,
}

/// A message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The id, unique and increasing within its queue.
    pub id: u64,
    /// When it was pushed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Priority, lower first; 0 by default.
    pub priority: u32,
    /// Unix milliseconds before which it is not ready; 0 for none.
    pub not_before_ms: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

impl From<StoredFrame> for Message {
    fn from(f: StoredFrame) -> Message {
        Message {
            id: f.id,
            timestamp_ms: f.timestamp_ms,
            priority: f.attrs.priority,
            not_before_ms: f.attrs.not_before_ms,
            payload: f.payload,
        }
    }
}

/// Options of one push: priority and delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// Lower is delivered first. Default 0.
    pub priority: u32,
    /// Not delivered before this much time has passed. Default none.
    pub delay: Duration,
}

/// Figures of one queue's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Oldest id still on disk.
    pub first_id: u64,
    /// The id the next push gets.
    pub next_id: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of all segment files.
    pub bytes_on_disk: u64,
}

impl Queue {
    pub(crate) fn new(log: Arc<Log>, store: Arc<StoreInner>) -> Queue {
        Queue { log, _store: store }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.log.name
    }

    /// Appends one message and returns its id. Under the default
    /// [`Durability::Sync`](crate::Durability::Sync) it returns only once
    /// the message is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) above
    /// `message_bytes_max`; [`Error::Poisoned`](crate::Error::Poisoned)
    /// after an earlier failed write or fsync; I/O errors
    /// ([`Error::DiskFull`](crate::Error::DiskFull) among them), after which
    /// the queue is poisoned; [`Error::Closed`](crate::Error::Closed).
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<u64> {
        self.log.append(&[(payload.as_ref(), Attrs::default())])
    }

    /// Appends one message with a priority and a delay.
    ///
    /// # Errors
    ///
    /// As [`Queue::push`].
    pub fn push_with(&self, payload: impl AsRef<[u8]>, options: PushOptions) -> Result<u64> {
        let attrs = Attrs {
            priority: options.priority,
            not_before_ms: if options.delay.is_zero() {
                0
            } else {
                crate::log::now_ms()
                    .saturating_add(u64::try_from(options.delay.as_millis()).unwrap_or(u64::MAX))
            },
        };
        self.log.append(&[(payload.as_ref(), attrs)])
    }

    /// Appends messages as one commit (one write, one fsync under `Sync`)
    /// and returns their ids. An empty batch returns an empty range.
    ///
    /// # Errors
    ///
    /// As [`Queue::push`]; a batch with an oversize message is refused
    /// whole.
    pub fn push_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>> {
        if payloads.is_empty() {
            let next = self.log.next_id();
            return Ok(next..next);
        }
        let items: Vec<(&[u8], Attrs)> = payloads
            .iter()
            .map(|p| (p.as_ref(), Attrs::default()))
            .collect();
        let first = self.log.append(&items)?;
        Ok(first..first + payloads.len() as u64)
    }

    /// Reads the message with `id`, or `None` if there is none (never
    /// pushed, not yet visible, or removed).
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`](crate::Error::Corruption) naming the file and
    /// offset if the message's bytes fail their check; I/O errors.
    pub fn read(&self, id: u64) -> Result<Option<Message>> {
        Ok(self.log.read(id)?.map(Message::from))
    }

    /// Iterates over messages from `id` on, in id order, until it catches
    /// up with the writer. A damaged range yields one
    /// [`Error::Corruption`](crate::Error::Corruption); iteration continues
    /// with the valid messages after it.
    pub fn reader(&self, id: u64) -> Reader {
        Reader {
            inner: self.log.reader(id),
        }
    }

    /// Writes and fsyncs everything pushed so far (the way to make
    /// `Buffered` pushes durable).
    ///
    /// # Errors
    ///
    /// I/O errors, after which the queue is poisoned;
    /// [`Error::Poisoned`](crate::Error::Poisoned).
    pub fn flush(&self) -> Result<()> {
        self.log.flush()
    }

    /// The id the next push gets.
    pub fn next_id(&self) -> u64 {
        self.log.next_id()
    }

    /// Figures of the log.
    ///
    /// # Errors
    ///
    /// I/O errors while loading segment metadata.
    pub fn log_stats(&self) -> Result<LogStats> {
        Ok(LogStats {
            first_id: self.log.first_id(),
            next_id: self.log.next_id(),
            segments: self.log.segment_count(),
            bytes_on_disk: self.log.bytes_on_disk()?,
        })
    }

    /// What recovery found when the queue was opened.
    pub fn recovery(&self) -> &QueueRecovery {
        self.log.recovery()
    }
}

/// An iterator over a queue's messages in id order; see [`Queue::reader`].
#[derive(Debug)]
pub struct Reader {
    inner: LogReader,
}

impl Reader {
    /// The id the next message will have at least.
    pub fn position(&self) -> u64 {
        self.inner.position()
    }
}

impl Iterator for Reader {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        self.inner.next().map(|f| f.map(Message::from)).transpose()
    }
}
