//! The store: one directory, one owner, many queues.
//!
//! ```text
//! <store>/LOCK                 lock file (File::try_lock), empty
//! <store>/millpond.store       store meta file (magic, version)
//! <store>/queues/<name>/       one directory per queue, holding its
//!                              segments (*.seg) and indexes (*.idx)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::compact::CompactReport;
use crate::error::{Error, IoContext, Result};
use crate::fs::{self, Fs, LockGuard, OpenMode};
use crate::log::QueueRecovery;
use crate::name::validate_name;
use crate::options::Options;
use crate::queue::{Queue, QueueShared};

/// Store meta file magic.
pub const STORE_MAGIC: [u8; 8] = *b"MLPDSTOR";
/// Store format version written by this build.
pub const STORE_VERSION: u32 = 1;
const META_FILE: &str = "millpond.store";
const LOCK_FILE: &str = "LOCK";
const QUEUES_DIR: &str = "queues";

/// A store: a directory of named queues owned by one process.
///
/// Cheap to clone; clones share the store. The lock on the directory is
/// held until [`Store::close`] or until the last clone and the last
/// [`Queue`] handle are dropped. Dropping the last handle closes the store
/// cleanly, ignoring errors; call [`Store::close`] to see them.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
pub(crate) struct StoreInner {
    path: PathBuf,
    options: Options,
    queues: Mutex<BTreeMap<String, Arc<QueueShared>>>,
    lock: Mutex<Option<LockGuard>>,
    report: RecoveryReport,
    compactor: Arc<CompactorStop>,
    /// Held by a compaction pass and by close, so they never interleave.
    pass: Mutex<()>,
}

/// Stops the background compactor.
#[derive(Debug, Default)]
struct CompactorStop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

/// What opening the store found, queue by queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// One entry per queue, by name.
    pub queues: Vec<QueueRecovery>,
    /// Time the whole open took.
    pub duration: Duration,
}

impl RecoveryReport {
    /// Whether anything was truncated, rewritten or found damaged.
    pub fn is_clean(&self) -> bool {
        self.queues
            .iter()
            .all(|q| q.torn_tail.is_none() && q.damaged.is_empty() && q.header_rewritten.is_none())
    }

    /// Segments scanned over all queues.
    pub fn segments_scanned(&self) -> usize {
        self.queues.iter().map(|q| q.segments_scanned).sum()
    }

    /// Bytes truncated over all queues.
    pub fn bytes_truncated(&self) -> u64 {
        self.queues.iter().map(|q| q.bytes_truncated).sum()
    }
}

fn encode_meta() -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&STORE_MAGIC);
    b[8..12].copy_from_slice(&STORE_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn check_meta(path: &Path, b: &[u8]) -> Result<()> {
    if b.len() != 16 || b[..8] != STORE_MAGIC {
        return Err(Error::corruption(path, 0, "not a millpond store meta file"));
    }
    let crc = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[..12]) {
        return Err(Error::corruption(
            path,
            12,
            "store meta file checksum mismatch",
        ));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version > STORE_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: STORE_VERSION,
        });
    }
    Ok(())
}

impl Store {
    /// Opens the store in `path`, creating it if needed, and recovers every
    /// queue in it.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when another owner holds the store;
    /// [`Error::UnsupportedVersion`] for files of a newer format;
    /// [`Error::Corruption`] for interior damage under
    /// [`RecoveryMode::Fail`](crate::RecoveryMode::Fail); [`Error::Io`] and
    /// [`Error::DiskFull`] for I/O failures; [`Error::InvalidOption`].
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        let started = Instant::now();
        options.validate()?;
        let path = path.as_ref().to_owned();
        let fs = options.fs.clone();
        fs::create_dir_durable(&*fs, &path).ctx("create store directory", &path)?;
        let lock_path = path.join(LOCK_FILE);
        let lock = fs
            .try_lock(&lock_path)
            .ctx("lock", &lock_path)?
            .ok_or(Error::Locked { path: lock_path })?;
        let meta_path = path.join(META_FILE);
        let queues_dir = path.join(QUEUES_DIR);
        match fs.open(&meta_path, OpenMode::Read) {
            Ok(f) => {
                let bytes = f.map().ctx("read", &meta_path)?;
                check_meta(&meta_path, &bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.create_dir_all(&queues_dir)
                    .ctx("create directory", &queues_dir)?;
                fs::write_atomic(&*fs, &meta_path, &encode_meta()).ctx("write", &meta_path)?;
            }
            Err(e) => return Err(Error::io("open", &meta_path, e)),
        }
        let mut queues = BTreeMap::new();
        let mut report = RecoveryReport::default();
        let names = match fs.list_dir(&queues_dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.create_dir_all(&queues_dir)
                    .ctx("create directory", &queues_dir)?;
                fs.sync_dir(&path).ctx("fsync directory", &path)?;
                Vec::new()
            }
            Err(e) => return Err(Error::io("list", &queues_dir, e)),
        };
        for name in names {
            if validate_name(&name).is_err() {
                continue;
            }
            let q = QueueShared::open(&name, queues_dir.join(&name), &options)?;
            report.queues.push(q.recovery().clone());
            queues.insert(name, q);
        }
        report.duration = started.elapsed();
        let compact_interval = options.compact_interval;
        let store = Store {
            inner: Arc::new(StoreInner {
                path,
                options,
                queues: Mutex::new(queues),
                lock: Mutex::new(Some(lock)),
                report,
                compactor: Arc::new(CompactorStop::default()),
                pass: Mutex::new(()),
            }),
        };
        if let Some(every) = compact_interval {
            let weak = Arc::downgrade(&store.inner);
            let stop = store.inner.compactor.clone();
            std::thread::Builder::new()
                .name("millpond-compactor".into())
                .spawn(move || run_compactor(&weak, &stop, every))
                .map_err(|e| Error::io("spawn compactor for", store.path(), e))?;
        }
        Ok(store)
    }

    /// Runs one compaction pass over every queue now and returns what it
    /// did, summed. The background compactor does the same on its timer.
    ///
    /// # Errors
    ///
    /// I/O errors; the first queue that fails ends the pass.
    pub fn compact_now(&self) -> Result<CompactReport> {
        self.inner.compact_all()
    }

    /// Opens the queue `name`, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a name that breaks the rules of
    /// [`validate_name`](crate::validate_name); [`Error::Closed`] after
    /// [`Store::close`]; I/O errors while creating it.
    pub fn queue(&self, name: &str) -> Result<Queue> {
        let q = self.inner.queue_shared(name)?;
        Ok(Queue::new(q, self.inner.clone()))
    }

    /// Names of the queues in the store, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        self.inner
            .queues
            .lock()
            .expect("store queues")
            .keys()
            .cloned()
            .collect()
    }

    /// What opening the store found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The file system the store uses.
    pub fn fs(&self) -> &Arc<dyn Fs> {
        &self.inner.options.fs
    }

    /// Flushes and fsyncs every queue, writes the indexes that let the next
    /// open skip scanning, and releases the lock. Later writes through any
    /// handle fail with [`Error::Closed`].
    ///
    /// # Errors
    ///
    /// The first error any queue reported while closing.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

/// Nice value of the background compactor thread: the lowest priority.
const COMPACTOR_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority to [`COMPACTOR_NICE`] (on
/// Linux the nice value belongs to the thread). Best effort: a failure
/// leaves the thread at its priority.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), COMPACTOR_NICE);
    }
}

/// The body of the compactor thread: a pass every `every` until the store
/// closes or is dropped. Errors are kept for the next pass to retry. The
/// thread runs at the lowest CPU priority: a pass is background work, and a
/// push or reserve woken from its `fdatasync` should not wait for a CPU
/// behind it. `Store::compact_now` runs at its caller's priority.
fn run_compactor(store: &Weak<StoreInner>, stop: &CompactorStop, every: Duration) {
    lower_thread_priority();
    let mut stopped = stop.stopped.lock().expect("compactor lock");
    loop {
        stopped = stop
            .cv
            .wait_timeout(stopped, every)
            .expect("compactor lock")
            .0;
        if *stopped {
            return;
        }
        let Some(inner) = store.upgrade() else { return };
        drop(stopped);
        let _ = inner.compact_all();
        drop(inner);
        stopped = stop.stopped.lock().expect("compactor lock");
    }
}

impl StoreInner {
    fn compact_all(&self) -> Result<CompactReport> {
        let _pass = self.pass.lock().expect("pass lock");
        if self.lock.lock().expect("store lock").is_none() {
            return Err(Error::Closed);
        }
        let queues: Vec<_> = self
            .queues
            .lock()
            .expect("store queues")
            .values()
            .cloned()
            .collect();
        let mut total = CompactReport::default();
        let mut first_err = None;
        for q in queues {
            // One queue's failure must not stop the others' compaction.
            match q.compact(
                self.options.copy_forward_percent,
                self.options.compact_journal_bytes,
            ) {
                Ok(r) => {
                    total.absorb(&r);
                    total.segments += r.segments;
                    total.bytes_on_disk += r.bytes_on_disk;
                    total.live_bytes += r.live_bytes;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(total), Err)
    }

    /// Opens or creates the queue `name`.
    pub(crate) fn queue_shared(&self, name: &str) -> Result<Arc<QueueShared>> {
        validate_name(name)?;
        if self.lock.lock().expect("store lock").is_none() {
            return Err(Error::Closed);
        }
        let mut queues = self.queues.lock().expect("store queues");
        if let Some(q) = queues.get(name) {
            return Ok(q.clone());
        }
        let fs = &self.options.fs;
        let queues_dir = self.path.join(QUEUES_DIR);
        let dir = queues_dir.join(name);
        fs.create_dir_all(&dir)
            .ctx("create queue directory", &dir)?;
        fs.sync_dir(&queues_dir)
            .ctx("fsync directory", &queues_dir)?;
        let q = QueueShared::open(name, dir, &self.options)?;
        queues.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    fn close(&self) -> Result<()> {
        *self.compactor.stopped.lock().expect("compactor lock") = true;
        self.compactor.cv.notify_all();
        let _pass = self.pass.lock().expect("pass lock");
        let mut lock = self.lock.lock().expect("store lock");
        let logs: Vec<_> = self
            .queues
            .lock()
            .expect("store queues")
            .values()
            .cloned()
            .collect();
        let mut first_err = None;
        for log in logs {
            if let Err(e) = log.close() {
                first_err.get_or_insert(e);
            }
        }
        *lock = None;
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
