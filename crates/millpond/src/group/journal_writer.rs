//! The open journal file of a group and its pipelined group commit.
//!
//! Records are appended to a buffer under the group's lock and get a
//! ticket (their sequence number). A caller then waits for its ticket to be
//! *written* (handed to the OS: a reservation) or *durable* (fsynced: an
//! ack, nack, bury or kick under `Sync`):
//!
//! - **Writing** happens under the journal's mutex, by whichever waiter
//!   needs it first: one positional write of everything buffered, a few
//!   microseconds for records of 24 bytes. It never waits for an fsync, so
//!   a reservation returns while an ack's `fdatasync` is in flight.
//! - **Syncing** is done by one thread at a time, without the mutex: it
//!   takes the written watermark, calls `sync_data`, and then marks that
//!   watermark durable. Records written while it runs are covered by the
//!   next sync: generation N is fsynced while N+1 is written.
//! - **Waking** is targeted: a waiter parks on its own condition variable.
//!   A finished sync wakes the waiters it made durable and, if any are
//!   left, exactly one of them to lead the next sync (hand-off), instead of
//!   waking everyone to race for it.
//! - **Gathering**: the threads a sync releases come back with their next
//!   ack a moment later. Syncing as soon as the last sync ends would split
//!   the threads into two cohorts that alternate syncs, each carrying half
//!   of them. So a leader first waits, at most [`GATHER_MAX`], until as
//!   many threads wait for a sync as the last one ended with (those it
//!   carried plus those that arrived while it ran). A lone thread expects
//!   only itself and never waits.
//!
//! Group commit is kept: every ack waiting while a sync runs is covered by
//! the one sync that follows. An ack never returns before a sync that
//! started after its bytes were written has finished.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::journal::{HEADER_LEN, Record, encode_all, encode_header, file_name};
use crate::error::{Error, IoContext, Result};
use crate::fs::{Fs, FsFile, OpenMode};

/// Longest a sync leader waits for the threads it expects to join.
const GATHER_MAX: Duration = Duration::from_micros(300);

/// An open journal file with pipelined group commit.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    st: Mutex<JState>,
    /// Wakes a gathering leader once the threads it expects have joined.
    gathered: Condvar,
    /// Tells the group's `Interval` timer that records were appended.
    pub timer: Arc<TimerSignal>,
}

/// How appends wake a group's `Interval` journal timer, which otherwise
/// sleeps: it holds this, not the group, so that dropping the group (and
/// its journal, which closes the signal) ends it.
#[derive(Debug, Default)]
pub(crate) struct TimerSignal {
    /// Set by the first append after the timer last took the signal: later
    /// appends pay one atomic swap, not a lock and a wake-up.
    raised: std::sync::atomic::AtomicBool,
    /// (records appended since the timer took the signal, closed)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl TimerSignal {
    /// After records were buffered: wakes the timer if it sleeps.
    fn raise(&self) {
        use std::sync::atomic::Ordering;
        if !self.raised.swap(true, Ordering::SeqCst) {
            self.state.lock().expect("timer signal lock").0 = true;
            self.cv.notify_one();
        }
    }

    /// Ends the timer's wait for good.
    fn close(&self) {
        self.state.lock().expect("timer signal lock").1 = true;
        self.cv.notify_one();
    }

    /// Waits until records were appended since the last call (true) or
    /// the journal is gone (false).
    pub fn wait(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut st = self.state.lock().expect("timer signal lock");
        while !st.0 && !st.1 {
            st = self.cv.wait(st).expect("timer signal lock");
        }
        if st.1 {
            return false;
        }
        st.0 = false;
        // Records buffered before this reset are covered by the sync the
        // caller runs next; an append after it raises the signal again.
        self.raised.store(false, Ordering::SeqCst);
        true
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.timer.close();
    }
}

#[derive(Debug)]
struct JState {
    file: Arc<dyn FsFile>,
    path: PathBuf,
    seq: u64,
    /// File length once everything handed to a write is written.
    len: u64,
    /// The file's length: `len`, then zeros written ahead of the records
    /// so that appends overwrite allocated blocks (see
    /// `Options::preallocate_bytes`).
    file_end: u64,
    /// How far past `len` the file is extended when a write passes
    /// `file_end`; 0: never.
    preallocate: u64,
    /// Records appended, not yet written.
    buf: Vec<u8>,
    /// Tickets handed out so far (the last one).
    appended: u64,
    /// `appended` when the current journal file was started.
    appended_at_rotation: u64,
    /// Every ticket up to this one is written.
    written: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A thread is in `sync_data`.
    syncing: bool,
    /// A would-be sync leader is waiting for others to join.
    gathering: bool,
    /// Threads whose records are written and that wait for a sync (the
    /// leader and the parked ones).
    sync_waiting: u64,
    /// How many threads the next sync should carry: `sync_waiting` when
    /// the last one ended.
    sync_expected: u64,
    /// Threads parked until a sync covers their ticket (or until it is
    /// their turn to lead one). At most one per thread using the group.
    waiters: Vec<Waiter>,
    next_token: u64,
    poisoned: Option<Arc<str>>,
}

#[derive(Debug)]
struct Waiter {
    token: u64,
    ticket: u64,
    cv: Arc<Condvar>,
}

/// Whether a wait needs the records written or durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    Written,
    Durable,
}

impl JState {
    fn done(&self, ticket: u64, goal: Goal) -> bool {
        match goal {
            Goal::Written => self.written >= ticket,
            Goal::Durable => self.durable >= ticket,
        }
    }

    /// Writes everything buffered at the end of the file, holding the lock.
    fn write_buffered(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            self.written = self.appended;
            return Ok(());
        }
        if let Some(cause) = &self.poisoned {
            return Err(poisoned(cause));
        }
        match self
            .file
            .write_all_at(&self.buf, self.len)
            .ctx("write journal", &self.path)
        {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                self.written = self.appended;
                if self.len > self.file_end {
                    // Zeros ahead of the records; the reader takes zeros to
                    // the end of the file as no record.
                    let target =
                        crate::log::preallocate_target(self.len, self.preallocate, u64::MAX);
                    if let Err(e) = crate::fs::write_zeros(&*self.file, self.len, target)
                        .ctx("preallocate journal", &self.path)
                    {
                        self.poison(&e);
                        return Err(e);
                    }
                    self.file_end = target;
                }
                Ok(())
            }
            Err(e) => {
                self.poison(&e);
                Err(e)
            }
        }
    }

    fn poison(&mut self, e: &Error) {
        self.poisoned
            .get_or_insert_with(|| Arc::from(e.to_string()));
        self.wake();
    }

    /// Wakes the waiters whose ticket is durable (all of them once
    /// poisoned), then, if no sync runs, the oldest remaining one to lead
    /// the next.
    fn wake(&mut self) {
        let (durable, all) = (self.durable, self.poisoned.is_some());
        self.waiters.retain(|w| {
            let go = all || w.ticket <= durable;
            if go {
                w.cv.notify_one();
            }
            !go
        });
        if !self.syncing && !self.gathering && !self.waiters.is_empty() {
            let leader = self.waiters.remove(0);
            leader.cv.notify_one();
        }
    }
}

impl Journal {
    /// Creates journal `seq` durably. Writes extend the file with zeros
    /// `preallocate` bytes ahead of the records (0: never).
    pub fn create(fs: Arc<dyn Fs>, dir: &Path, seq: u64, preallocate: u64) -> Result<Journal> {
        let (file, path) = create_file(&*fs, dir, seq)?;
        Ok(Journal::over(
            fs,
            dir,
            file,
            path,
            seq,
            HEADER_LEN,
            preallocate,
        ))
    }

    /// Opens journal `seq`, durable already and holding no record (its
    /// header, then nothing or zeros), to append after its header.
    pub fn reopen_empty(
        fs: Arc<dyn Fs>,
        dir: &Path,
        seq: u64,
        preallocate: u64,
    ) -> Result<Journal> {
        let path = dir.join(file_name(seq));
        let file = fs
            .open(&path, OpenMode::ReadWrite)
            .ctx("open journal", &path)?;
        let file_end = file.len().ctx("size journal", &path)?.max(HEADER_LEN);
        Ok(Journal::over(
            fs,
            dir,
            file,
            path,
            seq,
            file_end,
            preallocate,
        ))
    }

    /// A journal appending after the header of `file`, which is `file_end`
    /// bytes long.
    fn over(
        fs: Arc<dyn Fs>,
        dir: &Path,
        file: Arc<dyn FsFile>,
        path: PathBuf,
        seq: u64,
        file_end: u64,
        preallocate: u64,
    ) -> Journal {
        Journal {
            dir: dir.to_owned(),
            fs,
            st: Mutex::new(JState {
                file,
                path,
                seq,
                len: HEADER_LEN,
                file_end,
                preallocate,
                buf: Vec::new(),
                appended: 0,
                appended_at_rotation: 0,
                written: 0,
                durable: 0,
                syncing: false,
                gathering: false,
                sync_waiting: 0,
                sync_expected: 0,
                waiters: Vec::new(),
                next_token: 0,
                poisoned: None,
            }),
            gathered: Condvar::new(),
            timer: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JState> {
        self.st.lock().expect("journal lock")
    }

    /// The current journal's sequence number, its length in bytes, and
    /// the records appended to it, a run record's one by one (what
    /// replaying it would go through).
    pub fn position(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (
            st.seq,
            st.len + st.buf.len() as u64,
            st.appended - st.appended_at_rotation,
        )
    }

    /// Buffers a record; returns the ticket to wait on.
    pub fn append(&self, rec: Record) -> Result<u64> {
        self.append_all(std::slice::from_ref(&rec))
    }

    /// Buffers records in order under one lock (a batch's reserves or
    /// acks); returns the ticket of the last, which covers them all.
    pub fn append_all(&self, recs: &[Record]) -> Result<u64> {
        let mut st = self.lock();
        if let Some(cause) = &st.poisoned {
            return Err(poisoned(cause));
        }
        encode_all(recs, &mut st.buf);
        st.appended += recs.len() as u64;
        let ticket = st.appended;
        drop(st);
        self.timer.raise();
        Ok(ticket)
    }

    /// Waits until the record with `ticket` is written or durable: writes
    /// what is buffered if it is not written yet, and leads a sync if one
    /// is needed and none runs; otherwise parks until a sync covers it or
    /// hands it the lead.
    pub fn wait(&self, ticket: u64, goal: Goal) -> Result<()> {
        let mut st = self.lock();
        assert!(
            ticket <= st.appended,
            "ticket {ticket} was never handed out"
        );
        let mut counted = false;
        let r = loop {
            if st.done(ticket, goal) {
                break Ok(());
            }
            if let Some(cause) = &st.poisoned {
                break Err(poisoned(cause));
            }
            if st.written < ticket {
                if let Err(e) = st.write_buffered() {
                    break Err(e);
                }
                continue;
            }
            debug_assert_eq!(goal, Goal::Durable);
            if !counted {
                counted = true;
                st.sync_waiting += 1;
                if st.gathering && st.sync_waiting >= st.sync_expected {
                    self.gathered.notify_one();
                }
            }
            if st.syncing || st.gathering {
                st = self.park(st, ticket);
                continue;
            }
            if st.sync_waiting < st.sync_expected {
                st = self.gather(st);
                if st.poisoned.is_some() {
                    continue;
                }
            }
            st = self.sync_round(st);
        };
        if counted {
            st.sync_waiting -= 1;
        }
        r
    }

    /// Waits, at most [`GATHER_MAX`], until as many threads wait for a
    /// sync as the last one ended with.
    fn gather<'a>(&'a self, mut st: MutexGuard<'a, JState>) -> MutexGuard<'a, JState> {
        st.gathering = true;
        let deadline = Instant::now() + GATHER_MAX;
        while st.sync_waiting < st.sync_expected && st.poisoned.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .gathered
                .wait_timeout(st, deadline - now)
                .expect("journal lock")
                .0;
        }
        st.gathering = false;
        st
    }

    /// Fsyncs the file without the lock, then marks what was written
    /// before it started as durable and wakes whom that concerns.
    fn sync_round<'a>(&'a self, mut st: MutexGuard<'a, JState>) -> MutexGuard<'a, JState> {
        debug_assert!(!st.syncing);
        st.syncing = true;
        let target = st.written;
        let (file, path) = (st.file.clone(), st.path.clone());
        drop(st);
        let r = file.sync_data().ctx("fsync journal", &path);
        let mut st = self.lock();
        st.syncing = false;
        st.sync_expected = st.sync_waiting;
        match r {
            Ok(()) => {
                st.durable = st.durable.max(target);
                st.wake();
            }
            Err(e) => st.poison(&e),
        }
        st
    }

    /// Parks until a sync covers `ticket`, the lead is handed over, or the
    /// journal is poisoned.
    fn park<'a>(&'a self, mut st: MutexGuard<'a, JState>, ticket: u64) -> MutexGuard<'a, JState> {
        let token = st.next_token;
        st.next_token += 1;
        let cv = Arc::new(Condvar::new());
        st.waiters.push(Waiter {
            token,
            ticket,
            cv: cv.clone(),
        });
        while st.waiters.iter().any(|w| w.token == token) {
            st = cv.wait(st).expect("journal lock");
        }
        st
    }

    /// Writes and fsyncs everything, then starts journal `seq`, durably.
    /// Returns the old journal's path (the caller deletes it once a
    /// checkpoint that no longer needs it is durable). The caller holds the
    /// group's lock, so nothing is appended meanwhile.
    pub fn rotate(&self, seq: u64) -> Result<PathBuf> {
        let appended = self.lock().appended;
        self.wait(appended, Goal::Durable)?;
        let mut st = self.lock();
        if let Some(cause) = &st.poisoned {
            return Err(poisoned(cause));
        }
        assert!(
            st.buf.is_empty() && st.durable >= st.appended,
            "records appended during a rotation"
        );
        let (file, path) = match create_file(&*self.fs, &self.dir, seq) {
            Ok(x) => x,
            Err(e) => {
                st.poison(&e);
                return Err(e);
            }
        };
        // A sync still running on the old file (led by a thread whose
        // records this wait already saw durable) marks only tickets of the
        // old file durable; its result is kept with `max`.
        let old = std::mem::replace(&mut st.path, path);
        st.file = file;
        st.seq = seq;
        st.len = HEADER_LEN;
        st.file_end = HEADER_LEN;
        st.appended_at_rotation = st.appended;
        Ok(old)
    }

    /// Writes and fsyncs everything buffered.
    pub fn sync(&self) -> Result<()> {
        let ticket = self.lock().appended;
        self.wait(ticket, Goal::Durable)
    }

    /// Threads parked in [`Journal::wait`].
    #[cfg(test)]
    fn parked(&self) -> usize {
        self.lock().waiters.len()
    }
}

fn poisoned(cause: &Arc<str>) -> Error {
    Error::Poisoned {
        queue: "group journal".into(),
        cause: cause.clone(),
    }
}

fn create_file(fs: &dyn Fs, dir: &Path, seq: u64) -> Result<(Arc<dyn FsFile>, PathBuf)> {
    let path = dir.join(file_name(seq));
    let file = fs
        .open(&path, OpenMode::CreateTruncate)
        .ctx("create journal", &path)?;
    file.write_all_at(&encode_header(seq), 0)
        .ctx("write journal header", &path)?;
    file.sync_data().ctx("fsync journal", &path)?;
    fs.sync_dir(dir).ctx("fsync directory", dir)?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{CrashOptions, LockGuard, Mapped, SimFs};
    use crate::group::journal;
    use std::io;
    use std::sync::mpsc;
    use std::time::Duration;

    /// How long a test waits for something that should happen at once.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// Holds `sync_data` calls while closed; counts them; can fail them.
    #[derive(Debug, Default)]
    struct Gate {
        st: Mutex<GateState>,
        cv: Condvar,
    }

    #[derive(Debug, Default)]
    struct GateState {
        closed: bool,
        fail: bool,
        /// Calls of `sync_data` so far (held ones included).
        syncs: u64,
        /// Calls held right now.
        held: u64,
    }

    impl Gate {
        fn set(&self, closed: bool, fail: bool) {
            let mut st = self.st.lock().unwrap();
            st.closed = closed;
            st.fail = fail;
            self.cv.notify_all();
        }

        fn syncs(&self) -> u64 {
            self.st.lock().unwrap().syncs
        }

        /// Waits until `n` syncs are held.
        fn await_held(&self, n: u64) {
            let st = self.st.lock().unwrap();
            let (st, t) = self
                .cv
                .wait_timeout_while(st, PATIENCE, |st| st.held != n)
                .unwrap();
            assert!(!t.timed_out(), "expected {n} held syncs, found {}", st.held);
        }

        fn pass(&self) -> io::Result<()> {
            let mut st = self.st.lock().unwrap();
            st.syncs += 1;
            st.held += 1;
            self.cv.notify_all();
            st = self.cv.wait_while(st, |st| st.closed).unwrap();
            st.held -= 1;
            self.cv.notify_all();
            if st.fail {
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
    }

    /// A [`SimFs`] whose files' `sync_data` goes through a [`Gate`].
    #[derive(Debug)]
    struct GatedFs {
        inner: SimFs,
        gate: Arc<Gate>,
    }

    #[derive(Debug)]
    struct GatedFile {
        inner: Arc<dyn FsFile>,
        gate: Arc<Gate>,
    }

    impl Fs for GatedFs {
        fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
            Ok(Arc::new(GatedFile {
                inner: self.inner.open(path, mode)?,
                gate: self.gate.clone(),
            }))
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.inner.create_dir_all(path)
        }
        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            self.inner.list_dir(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.inner.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.inner.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.inner.sync_dir(dir)
        }
        fn exists(&self, path: &Path) -> io::Result<bool> {
            self.inner.exists(path)
        }
        fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
            self.inner.try_lock(path)
        }
    }

    impl FsFile for GatedFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.inner.write_all_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn sync_data(&self) -> io::Result<()> {
            self.gate.pass()?;
            self.inner.sync_data()
        }
        fn map(&self) -> io::Result<Mapped> {
            self.inner.map()
        }
    }

    struct Setup {
        sim: SimFs,
        gate: Arc<Gate>,
        journal: Arc<Journal>,
    }

    const DIR: &str = "/g";

    fn setup() -> Setup {
        let sim = SimFs::new(7);
        let gate = Arc::new(Gate::default());
        let fs = Arc::new(GatedFs {
            inner: sim.clone(),
            gate: gate.clone(),
        });
        fs.create_dir_all(Path::new(DIR)).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let journal = Arc::new(Journal::create(fs, Path::new(DIR), 1, 0).unwrap());
        Setup { sim, gate, journal }
    }

    /// Records of journal 1 in the file as it is now (`durable`: as a power
    /// cut now would leave it).
    fn records(sim: &SimFs, durable: bool) -> Vec<Record> {
        let path = Path::new(DIR).join(file_name(1));
        let bytes = if durable {
            let image = sim.crash_image(CrashOptions::clean());
            image.file_bytes(&path)
        } else {
            sim.file_bytes(&path)
        };
        journal::read(&path, &bytes.unwrap_or_default(), 1)
            .unwrap()
            .records()
            .collect()
    }

    /// With preallocation, the first write extends the journal with zeros
    /// (whole pages), later writes stay inside them, and the records read
    /// back, durable after a power cut.
    #[test]
    fn writes_extend_the_journal_with_zeros_ahead() {
        let sim = SimFs::new(3);
        sim.create_dir_all(Path::new(DIR)).unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        let j = Journal::create(Arc::new(sim.clone()), Path::new(DIR), 1, 8192).unwrap();
        let path = Path::new(DIR).join(file_name(1));
        let t = j.append(Record::Ack { id: 1 }).unwrap();
        j.wait(t, Goal::Durable).unwrap();
        assert_eq!(sim.file_bytes(&path).unwrap().len(), 8192);
        for id in 2..=100 {
            let t = j.append(Record::Ack { id }).unwrap();
            j.wait(t, Goal::Durable).unwrap();
        }
        // 32 + 100 × 24 bytes of records: still inside the first 8 KiB.
        assert_eq!(sim.file_bytes(&path).unwrap().len(), 8192);
        let want: Vec<Record> = (1..=100).map(|id| Record::Ack { id }).collect();
        assert_eq!(records(&sim, true), want);
        let image = sim.crash_image(CrashOptions::clean());
        let r = journal::read(&path, &image.file_bytes(&path).unwrap(), 1).unwrap();
        assert_eq!(r.torn_bytes, 0);
        // Past the preallocated end the file grows again.
        for id in 101..=400 {
            let t = j.append(Record::Ack { id }).unwrap();
            j.wait(t, Goal::Written).unwrap();
        }
        let len = sim.file_bytes(&path).unwrap().len();
        assert!(len > 8192 && len.is_multiple_of(4096), "{len}");
    }

    /// Runs `f` on another thread; the receiver gets its result.
    fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    fn ack(j: &Arc<Journal>, id: u64) -> mpsc::Receiver<Result<()>> {
        let j = j.clone();
        spawn(move || {
            let t = j.append(Record::Ack { id })?;
            j.wait(t, Goal::Durable)
        })
    }

    #[test]
    fn reserve_is_written_while_an_ack_fsync_is_held() {
        let s = setup();
        s.gate.set(true, false);
        let acked = ack(&s.journal, 1);
        s.gate.await_held(1);

        // A reservation only needs its record written: it must not queue
        // behind the fsync in flight.
        let j = s.journal.clone();
        let reserved = spawn(move || {
            let t = j.append(Record::Reserve {
                id: 2,
                attempts: 1,
                priority: 0,
            })?;
            j.wait(t, Goal::Written)
        });
        let r = reserved.recv_timeout(PATIENCE);
        s.gate.set(false, false);
        r.expect("the reservation waited for the held fsync")
            .expect("reserve written");
        assert_eq!(
            records(&s.sim, false),
            vec![
                Record::Ack { id: 1 },
                Record::Reserve {
                    id: 2,
                    attempts: 1,
                    priority: 0
                }
            ]
        );
        acked.recv_timeout(PATIENCE).unwrap().expect("ack durable");
    }

    #[test]
    fn ack_returns_only_after_its_fsync() {
        let s = setup();
        s.gate.set(true, false);
        let acked = ack(&s.journal, 1);
        s.gate.await_held(1);
        assert!(
            acked.recv_timeout(Duration::from_millis(200)).is_err(),
            "ack returned while its fsync was held"
        );
        assert_eq!(records(&s.sim, true), vec![]);
        s.gate.set(false, false);
        acked.recv_timeout(PATIENCE).unwrap().expect("ack durable");
        assert_eq!(records(&s.sim, true), vec![Record::Ack { id: 1 }]);
    }

    #[test]
    fn acks_arriving_during_a_held_fsync_share_the_next_one() {
        let s = setup();
        let before = s.gate.syncs();
        s.gate.set(true, false);
        let first = ack(&s.journal, 0);
        s.gate.await_held(1);
        let n = 8u64;
        let rest: Vec<_> = (1..=n).map(|id| ack(&s.journal, id)).collect();
        // All eight are written and parked behind the held fsync, which
        // does not cover them.
        let t = std::time::Instant::now();
        while s.journal.parked() != n as usize {
            assert!(t.elapsed() < PATIENCE, "{} parked", s.journal.parked());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(records(&s.sim, false).len(), n as usize + 1);
        assert_eq!(s.gate.syncs() - before, 1);
        for rx in &rest {
            assert!(rx.try_recv().is_err(), "an ack returned before any fsync");
        }

        // Once it completes, one of the eight leads the next fsync, which
        // covers all of them.
        s.gate.set(false, false);
        first.recv_timeout(PATIENCE).unwrap().expect("first ack");
        for rx in rest {
            rx.recv_timeout(PATIENCE).unwrap().expect("ack durable");
        }
        assert_eq!(
            s.gate.syncs() - before,
            2,
            "group commit: one fsync for eight acks"
        );
        let durable = records(&s.sim, true);
        assert_eq!(durable.len(), n as usize + 1);
        assert_eq!(s.journal.parked(), 0);
    }

    #[test]
    fn failed_fsync_poisons_every_waiter() {
        let s = setup();
        s.gate.set(true, false);
        let first = ack(&s.journal, 1);
        s.gate.await_held(1);
        let second = ack(&s.journal, 2);
        let t = std::time::Instant::now();
        while s.journal.parked() != 1 {
            assert!(t.elapsed() < PATIENCE);
            std::thread::sleep(Duration::from_millis(1));
        }
        s.gate.set(false, true);
        for rx in [first, second] {
            let e = rx.recv_timeout(PATIENCE).unwrap().unwrap_err();
            assert!(matches!(e, Error::Poisoned { .. }), "{e:?}");
        }
        let e = s.journal.append(Record::Ack { id: 3 }).unwrap_err();
        assert!(matches!(e, Error::Poisoned { .. }), "{e:?}");
        assert!(s.journal.sync().is_err());
    }

    #[test]
    fn rotate_makes_everything_durable_and_starts_a_new_file() {
        let s = setup();
        let t = s.journal.append(Record::Ack { id: 1 }).unwrap();
        s.journal.wait(t, Goal::Written).unwrap();
        s.journal.append(Record::Bury { id: 2 }).unwrap();
        let old = s.journal.rotate(2).unwrap();
        assert_eq!(old, Path::new(DIR).join(file_name(1)));
        assert_eq!(
            records(&s.sim, true),
            vec![Record::Ack { id: 1 }, Record::Bury { id: 2 }]
        );
        assert_eq!(s.journal.position(), (2, HEADER_LEN, 0));
        let t = s.journal.append(Record::Kick { id: 2 }).unwrap();
        s.journal.wait(t, Goal::Durable).unwrap();
        assert_eq!(s.journal.position().2, 1, "records since the rotation");
        let path = Path::new(DIR).join(file_name(2));
        let image = s.sim.crash_image(CrashOptions::clean());
        let r = journal::read(&path, &image.file_bytes(&path).unwrap(), 2).unwrap();
        assert_eq!(
            r.records().collect::<Vec<_>>(),
            vec![Record::Kick { id: 2 }]
        );
    }
}
