//! Tubes: the registry that numbers them durably, and each tube's queue,
//! consumer group, writers, waiters and counters.
//!
//! A job id is `tube number << 40 | message id`: unique across tubes and
//! resolved without any per-job map. Tube numbers are handed out in order
//! of creation and kept in the registry queue
//! ([`REGISTRY_QUEUE`](crate::names::REGISTRY_QUEUE)), made durable before
//! the tube is used; `default` is tube 0, so its job ids are its message
//! ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millpond::{Durability, Group, GroupOptions, Queue, Store};
use tokio::sync::Notify;

use crate::names::{REGISTRY_QUEUE, queue_name};
use crate::writer::Writers;

/// Bits of a job id that hold the message id.
pub const MESSAGE_ID_BITS: u32 = 40;
/// The largest message id a job id can carry.
pub const MESSAGE_ID_MAX: u64 = (1 << MESSAGE_ID_BITS) - 1;
/// The most tubes a store can have (the rest of the 64-bit id).
pub const TUBE_COUNT_MAX: u64 = 1 << (64 - MESSAGE_ID_BITS);
/// The consumer group every tube's jobs are reserved through.
pub const GROUP: &str = "beanstalkd";

/// Splits a job id into (tube number, message id).
pub fn split_job_id(job: u64) -> (u32, u64) {
    ((job >> MESSAGE_ID_BITS) as u32, job & MESSAGE_ID_MAX)
}

/// Makes a job id.
pub fn job_id(tube: u32, message: u64) -> u64 {
    (u64::from(tube) << MESSAGE_ID_BITS) | message
}

/// One tube.
#[derive(Debug)]
pub struct Tube {
    /// Its number (the high bits of its job ids).
    pub number: u32,
    /// Its beanstalkd name.
    pub name: String,
    /// The queue holding its jobs.
    pub queue: Queue,
    /// The group reserving them.
    pub group: Group,
    /// Batching put and delete threads.
    pub writers: Writers,
    /// Connections waiting in `reserve` on this tube.
    waiters: Mutex<Vec<Arc<Notify>>>,
    /// Which connection reserved which message (by message id). Stale
    /// entries (a lease that ran out) are harmless: the engine's state says
    /// whether the job is still reserved.
    pub owners: Mutex<HashMap<u64, u64>>,
    /// Connections using it.
    pub using: AtomicU32,
    /// Connections watching it.
    pub watching: AtomicU32,
    /// Connections waiting in `reserve` while watching it.
    pub waiting: AtomicU32,
    /// `delete` commands that deleted a job of this tube.
    pub deletes: AtomicU64,
    /// `pause-tube` commands.
    pub pauses: AtomicU64,
    /// Until when it is paused, and for how long it was paused.
    pub paused: Mutex<Option<(Instant, Duration)>>,
}

impl Tube {
    /// Wakes every connection waiting to reserve from this tube.
    pub fn wake(&self) {
        let waiters = self.waiters.lock().expect("waiters lock");
        for w in waiters.iter() {
            w.notify_one();
        }
    }

    /// Registers `n` to be woken by [`Tube::wake`].
    pub fn add_waiter(&self, n: &Arc<Notify>) {
        self.waiters.lock().expect("waiters lock").push(n.clone());
    }

    /// Removes a waiter.
    pub fn remove_waiter(&self, n: &Arc<Notify>) {
        let mut w = self.waiters.lock().expect("waiters lock");
        if let Some(i) = w.iter().position(|x| Arc::ptr_eq(x, n)) {
            w.swap_remove(i);
        }
    }

    /// When its pause ends, if it is paused now.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut p = self.paused.lock().expect("pause lock");
        match *p {
            Some((until, _)) if until > Instant::now() => Some(until),
            Some(_) => {
                *p = None;
                None
            }
            None => None,
        }
    }

    /// Whether beanstalkd would still have this tube: it is used, watched,
    /// holds jobs, or is `default`.
    pub fn is_live(&self) -> bool {
        if self.number == 0 || self.using.load(Ordering::Relaxed) > 0 {
            return true;
        }
        if self.watching.load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.group
            .stats()
            .map(|s| s.ready + s.reserved + s.delayed + s.buried > 0)
            .unwrap_or(true)
    }
}

/// Why a tube could not be opened.
#[derive(Debug)]
pub enum TubeError {
    /// All tube numbers are used.
    Full,
    /// The engine refused.
    Engine(millpond::Error),
}

impl From<millpond::Error> for TubeError {
    fn from(e: millpond::Error) -> TubeError {
        TubeError::Engine(e)
    }
}

/// Every tube the store knows, by name and number.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    registry: Queue,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Names by number (index).
    names: Vec<String>,
    numbers: HashMap<String, u32>,
    /// Opened tubes.
    open: HashMap<u32, Arc<Tube>>,
}

impl Registry {
    /// Loads the registry from the store, creating it (with `default` as
    /// tube 0) if needed.
    ///
    /// # Errors
    ///
    /// Engine errors; a damaged registry.
    pub fn open(store: Store) -> millpond::Result<Registry> {
        let registry = store.queue(REGISTRY_QUEUE)?;
        let mut inner = Inner::default();
        for m in registry.reader(1) {
            let m = m?;
            let name = String::from_utf8_lossy(&m.payload).into_owned();
            let number = inner.names.len() as u32;
            inner.numbers.insert(name.clone(), number);
            inner.names.push(name);
        }
        let r = Registry {
            store,
            registry,
            inner: Mutex::new(inner),
        };
        r.by_name("default").map_err(|e| match e {
            TubeError::Engine(e) => e,
            TubeError::Full => unreachable!("the first tube"),
        })?;
        Ok(r)
    }

    /// The tube `name`, created (and registered durably) if new.
    ///
    /// # Errors
    ///
    /// [`TubeError::Full`]; engine errors.
    pub fn by_name(&self, name: &str) -> Result<Arc<Tube>, TubeError> {
        let mut inner = self.inner.lock().expect("registry lock");
        let number = match inner.numbers.get(name) {
            Some(&n) => n,
            None => {
                let n = inner.names.len() as u64;
                if n >= TUBE_COUNT_MAX {
                    return Err(TubeError::Full);
                }
                let id = self.registry.push(name.as_bytes())?;
                // Durable before any job id names the tube, whatever the
                // store's durability.
                self.registry.flush()?;
                if id != n + 1 {
                    return Err(TubeError::Engine(millpond::Error::Closed));
                }
                let n = n as u32;
                inner.names.push(name.to_owned());
                inner.numbers.insert(name.to_owned(), n);
                tracing::info!(tube = name, number = n, "tube created");
                n
            }
        };
        self.open_locked(&mut inner, number)
    }

    /// The tube with `number`, if there is one.
    ///
    /// # Errors
    ///
    /// Engine errors.
    pub fn by_number(&self, number: u32) -> Result<Option<Arc<Tube>>, TubeError> {
        let mut inner = self.inner.lock().expect("registry lock");
        if number as usize >= inner.names.len() {
            return Ok(None);
        }
        self.open_locked(&mut inner, number).map(Some)
    }

    /// The tube `name` if it exists and beanstalkd would still have it
    /// (see [`Tube::is_live`]).
    pub fn find_live(&self, name: &str) -> Option<Arc<Tube>> {
        let number = *self
            .inner
            .lock()
            .expect("registry lock")
            .numbers
            .get(name)?;
        let t = self.by_number(number).ok().flatten()?;
        t.is_live().then_some(t)
    }

    fn open_locked(&self, inner: &mut Inner, number: u32) -> Result<Arc<Tube>, TubeError> {
        if let Some(t) = inner.open.get(&number) {
            return Ok(t.clone());
        }
        let name = inner.names[number as usize].clone();
        let queue = self.store.queue(&queue_name(&name, number))?;
        let group = queue.group_with(
            GROUP,
            GroupOptions {
                max_attempts: u32::MAX,
                ..GroupOptions::default()
            },
        )?;
        let tube = Arc::new_cyclic(|weak| Tube {
            number,
            name,
            writers: Writers::new(
                weak.clone(),
                !matches!(self.store.options().durability_get(), Durability::Sync),
            ),
            queue,
            group,
            waiters: Mutex::new(Vec::new()),
            owners: Mutex::new(HashMap::new()),
            using: AtomicU32::new(0),
            watching: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            deletes: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            paused: Mutex::new(None),
        });
        inner.open.insert(number, tube.clone());
        Ok(tube)
    }

    /// Every tube that has been opened since start, by number.
    pub fn opened(&self) -> Vec<Arc<Tube>> {
        let inner = self.inner.lock().expect("registry lock");
        let mut v: Vec<Arc<Tube>> = inner.open.values().cloned().collect();
        v.sort_by_key(|t| t.number);
        v
    }

    /// Every registered tube, opened on the way (for `list-tubes` and
    /// `stats`); beanstalkd lists only live ones, see [`Tube::is_live`].
    pub fn all(&self) -> Vec<Arc<Tube>> {
        let count = self.inner.lock().expect("registry lock").names.len();
        (0..count as u32)
            .filter_map(|n| self.by_number(n).ok().flatten())
            .collect()
    }

    /// Stops every tube's writer threads, after answering what they hold.
    pub fn stop_writers(&self) {
        for t in self.opened() {
            t.writers.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_split_back() {
        assert_eq!(split_job_id(job_id(0, 5)), (0, 5));
        assert_eq!(job_id(0, 5), 5);
        assert_eq!(split_job_id(job_id(3, MESSAGE_ID_MAX)), (3, MESSAGE_ID_MAX));
        assert_eq!(job_id(1, 1), (1 << 40) + 1);
    }

    #[test]
    fn registry_numbers_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), millpond::Options::default()).unwrap();
            let r = Registry::open(store.clone()).unwrap();
            assert_eq!(r.by_name("default").unwrap().number, 0);
            assert_eq!(r.by_name("a+b").unwrap().number, 1);
            assert_eq!(r.by_name("c").unwrap().number, 2);
            assert_eq!(r.by_name("a+b").unwrap().number, 1);
            r.stop_writers();
            drop(r);
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), millpond::Options::default()).unwrap();
        let r = Registry::open(store.clone()).unwrap();
        assert_eq!(r.by_number(2).unwrap().unwrap().name, "c");
        assert_eq!(r.by_number(1).unwrap().unwrap().queue.name(), "bt.a_pb");
        assert!(r.by_number(3).unwrap().is_none());
        assert_eq!(r.by_name("d").unwrap().number, 3);
        r.stop_writers();
    }
}
