//! Per-tube writer threads: every connection's puts to a tube are gathered
//! into one `push_batch_with` (one write and, under `Sync`, one fsync),
//! and every connection's deletes into one `delete_batch` (one journal
//! commit). Each request is answered on its own channel once its batch is
//! done, so `INSERTED` and `DELETED` mean durable under `Sync`.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use millpond::PushOptions;
use tokio::sync::oneshot;

use crate::tubes::{MESSAGE_ID_MAX, Tube, job_id};

/// Most requests in one batch.
const BATCH_COUNT_MAX: usize = 4096;
/// Most payload bytes in one put batch (a batch is closed after the
/// request that passes it).
const BATCH_BYTES_MAX: usize = 8 << 20;

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored (durable under `Sync`), with its job id.
    Inserted(u64),
    /// The tube's message ids are used up (2^40).
    OutOfMemory,
    /// The engine failed (logged); the job may not be stored.
    Internal,
}

/// One put.
#[derive(Debug)]
pub struct PutReq {
    /// Header and body, as stored.
    pub payload: Vec<u8>,
    /// Priority and delay.
    pub opts: PushOptions,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<PutOutcome>,
}

/// One delete.
#[derive(Debug)]
pub struct DeleteReq {
    /// The message id within the tube.
    pub message: u64,
    /// The caller holds the reservation (if the job is reserved).
    pub reserved_ok: bool,
    /// Deleted (true), not found (false), or the engine failed (`Err`).
    pub reply: oneshot::Sender<Result<bool, ()>>,
}

/// A tube's writer threads, started on first use.
///
/// Under `Sync` they let many connections share one fsync. Under the
/// other durabilities no delete waits for an fsync, and handing each one
/// to a thread and back costs two context switches (most of the server's
/// CPU on 2 cores): connections then run their deletes themselves
/// ([`Writers::inline`]), batched per burst of pipelined commands, with
/// [`delete_batch`]. Puts still go through the put thread: run inline,
/// 64 pipelining connections each pushing its own small batch, blocking
/// tokio's worker threads, put 20% fewer jobs per second (measured side by
/// side, `docs/benchmarks.md`).
#[derive(Debug)]
pub struct Writers {
    tube: Weak<Tube>,
    inline: bool,
    puts: Mutex<Option<Sender<PutReq>>>,
    deletes: Mutex<Option<Sender<DeleteReq>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Writers {
    /// Writers for `tube`; `inline` when the store's durability does not
    /// fsync before a delete returns.
    pub fn new(tube: Weak<Tube>, inline: bool) -> Writers {
        Writers {
            tube,
            inline,
            puts: Mutex::new(None),
            deletes: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn start<T: Send + 'static>(
        &self,
        slot: &mut Option<Sender<T>>,
        what: &str,
        body: fn(Arc<Tube>, Receiver<T>),
    ) -> Option<Sender<T>> {
        if let Some(s) = slot {
            return Some(s.clone());
        }
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        let tube = self.tube.upgrade()?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("millpond-{what}-{}", tube.number))
            .spawn(move || body(tube, rx))
            .ok()?;
        self.threads.lock().expect("threads lock").push(handle);
        *slot = Some(tx.clone());
        Some(tx)
    }

    /// Connections run deletes themselves (see [`Writers`]).
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// Queues a put; false if the writers are stopped (shutting down).
    pub fn put(&self, req: PutReq) -> bool {
        let mut slot = self.puts.lock().expect("puts lock");
        if let Some(s) = slot.as_ref() {
            return s.send(req).is_ok();
        }
        match self.start(&mut slot, "put", put_loop) {
            Some(s) => s.send(req).is_ok(),
            None => false,
        }
    }

    /// Queues a delete; false if the writers are stopped.
    pub fn delete(&self, req: DeleteReq) -> bool {
        let mut slot = self.deletes.lock().expect("deletes lock");
        if let Some(s) = slot.as_ref() {
            return s.send(req).is_ok();
        }
        match self.start(&mut slot, "delete", delete_loop) {
            Some(s) => s.send(req).is_ok(),
            None => false,
        }
    }

    /// Closes the queues; the threads answer what they hold and exit.
    /// Joins them.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.puts.lock().expect("puts lock").take();
        self.deletes.lock().expect("deletes lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn put_loop(tube: Arc<Tube>, rx: Receiver<PutReq>) {
    let mut batch: Vec<PutReq> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut bytes = first.payload.len();
        batch.push(first);
        while batch.len() < BATCH_COUNT_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.payload.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let items: Vec<(&[u8], PushOptions)> = batch
            .iter()
            .map(|r| (r.payload.as_slice(), r.opts))
            .collect();
        let outcomes = put_batch(&tube, &items);
        drop(items);
        for (r, outcome) in batch.drain(..).zip(outcomes) {
            let _ = r.reply.send(outcome);
        }
    }
}

/// Pushes a batch of puts to `tube` with one commit; one outcome per put.
/// Wakes the tube's waiting reservers.
pub fn put_batch(tube: &Tube, items: &[(&[u8], PushOptions)]) -> Vec<PutOutcome> {
    let last = tube.queue.next_id().saturating_add(items.len() as u64 - 1);
    if last > MESSAGE_ID_MAX {
        tracing::warn!(tube = %tube.name, "message ids used up; put refused");
        return vec![PutOutcome::OutOfMemory; items.len()];
    }
    match tube.queue.push_batch_with(items) {
        Ok(ids) => {
            tube.wake();
            ids.map(|id| PutOutcome::Inserted(job_id(tube.number, id)))
                .collect()
        }
        Err(e) => {
            tracing::error!(tube = %tube.name, error = %e, "put batch failed");
            vec![PutOutcome::Internal; items.len()]
        }
    }
}

fn delete_loop(tube: Arc<Tube>, rx: Receiver<DeleteReq>) {
    let mut batch: Vec<DeleteReq> = Vec::new();
    let mut ids: Vec<(u64, bool)> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_COUNT_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        ids.clear();
        ids.extend(batch.iter().map(|r| (r.message, r.reserved_ok)));
        match delete_batch(&tube, &ids) {
            Ok(done) => {
                for (r, ok) in batch.drain(..).zip(done) {
                    let _ = r.reply.send(Ok(ok));
                }
            }
            Err(()) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(()));
                }
            }
        }
    }
}

/// Deletes a batch of (message id, caller holds its reservation) from
/// `tube` with one journal commit: whether each was deleted, or `Err` if
/// the engine failed (logged).
pub fn delete_batch(tube: &Tube, ids: &[(u64, bool)]) -> Result<Vec<bool>, ()> {
    match tube.group.delete_batch(ids) {
        Ok(done) => {
            let mut deleted = 0;
            {
                let mut owners = tube.owners.lock().expect("owners lock");
                for (&(message, _), &ok) in ids.iter().zip(&done) {
                    if ok {
                        owners.remove(&message);
                        deleted += 1;
                    }
                }
            }
            tube.deletes.fetch_add(deleted, Ordering::Relaxed);
            Ok(done)
        }
        Err(e) => {
            tracing::error!(tube = %tube.name, error = %e, "delete batch failed");
            Err(())
        }
    }
}
