//! The systems under comparison behind one small interface, [`Peer`]: a
//! durable FIFO with push, reserve (take the oldest message not yet handed
//! out) and ack (forget it for good), each opened in its own directory with
//! one durability setting.
//!
//! Peers without leases (queue-file, yaque) remove the message in
//! `reserve`, durably as far as they are durable; their `ack` does nothing.
//! fjall and raft-engine keep the consumer's cursor in memory (as an
//! application building a queue on them would) and make the ack durable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Lease for millpond and SQLite reservations; longer than any run.
const LEASE: Duration = Duration::from_secs(600);

/// The engine or library behind a [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Millpond,
    /// millpond with `Durability::Interval(100 ms)`: a write per push (no
    /// user-space buffer), fsync on a timer. Only in the kill rounds (i).
    MillpondInterval,
    Sqlite,
    QueueFile,
    Yaque,
    Fjall,
    RaftEngine,
}

/// Durability class: only rows of one class are compared with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Every push or ack is on disk when it returns (fsync per operation,
    /// or a group commit shared by concurrent operations).
    Sync,
    /// Pushes reach the OS (or a user-space buffer) but are not fsynced.
    Buffered,
}

/// One row of a table: a system at one durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub kind: Kind,
    pub class: Class,
}

/// Every configuration compared, millpond first in each class.
pub const ALL: [Config; 10] = [
    Config::new(Kind::Millpond, Class::Sync),
    Config::new(Kind::Sqlite, Class::Sync),
    Config::new(Kind::QueueFile, Class::Sync),
    Config::new(Kind::Fjall, Class::Sync),
    Config::new(Kind::RaftEngine, Class::Sync),
    Config::new(Kind::Millpond, Class::Buffered),
    Config::new(Kind::Sqlite, Class::Buffered),
    Config::new(Kind::Fjall, Class::Buffered),
    Config::new(Kind::RaftEngine, Class::Buffered),
    Config::new(Kind::Yaque, Class::Buffered),
];

impl Config {
    pub const fn new(kind: Kind, class: Class) -> Config {
        Config { kind, class }
    }

    /// The system's name in tables.
    pub fn name(self) -> &'static str {
        match self.kind {
            Kind::Millpond | Kind::MillpondInterval => "millpond",
            Kind::Sqlite => "SQLite (rusqlite)",
            Kind::QueueFile => "queue-file",
            Kind::Yaque => "yaque",
            Kind::Fjall => "fjall",
            Kind::RaftEngine => "raft-engine",
        }
    }

    /// A short name for command lines and chart legends.
    pub fn id(self) -> String {
        let kind = match self.kind {
            Kind::Millpond => "millpond",
            Kind::MillpondInterval => "millpond-interval",
            Kind::Sqlite => "sqlite",
            Kind::QueueFile => "queue-file",
            Kind::Yaque => "yaque",
            Kind::Fjall => "fjall",
            Kind::RaftEngine => "raft-engine",
        };
        let class = match self.class {
            Class::Sync => "sync",
            Class::Buffered => "buffered",
        };
        format!("{kind}/{class}")
    }

    /// Parses [`Config::id`].
    pub fn parse(s: &str) -> Option<Config> {
        ALL.into_iter()
            .chain([Config::new(Kind::MillpondInterval, Class::Buffered)])
            .find(|c| c.id() == s)
    }

    /// The durability setting, named as the system names it.
    pub fn durability(self) -> &'static str {
        match (self.kind, self.class) {
            (Kind::Millpond, Class::Sync) => "Sync (group commit)",
            (Kind::Millpond, Class::Buffered) => "Buffered",
            (Kind::MillpondInterval, _) => "Interval(100 ms)",
            (Kind::Sqlite, Class::Sync) => "WAL, synchronous=FULL",
            (Kind::Sqlite, Class::Buffered) => "WAL, synchronous=NORMAL",
            (Kind::QueueFile, _) => "fsync per op (default)",
            (Kind::Yaque, _) => "never fsyncs",
            (Kind::Fjall, Class::Sync) => "PersistMode::SyncData per op",
            (Kind::Fjall, Class::Buffered) => "buffered (write per op)",
            (Kind::RaftEngine, Class::Sync) => "write(sync=true), group commit",
            (Kind::RaftEngine, Class::Buffered) => "write(sync=false)",
        }
    }

    /// Opens (creating or recovering) the system in `dir`.
    pub fn open(self, dir: &Path) -> Box<dyn Peer> {
        match self.kind {
            Kind::Millpond => Box::new(Millpond::open(dir, self.class, false)),
            Kind::MillpondInterval => Box::new(Millpond::open(dir, self.class, true)),
            Kind::Sqlite => Box::new(Sqlite::open(dir, self.class)),
            Kind::QueueFile => Box::new(QFile::open(dir)),
            Kind::Yaque => Box::new(Yaque::open(dir)),
            Kind::Fjall => Box::new(Fjall::open(dir, self.class)),
            Kind::RaftEngine => Box::new(Raft::open(dir, self.class)),
        }
    }
}

/// A durable FIFO. Every method panics on an I/O error: this is a bench.
pub trait Peer: Send + Sync {
    /// Appends one message.
    fn push(&self, payload: &[u8]);
    /// Appends messages as one operation (one transaction, one write).
    fn push_batch(&self, payloads: &[Vec<u8>]);
    /// Takes the oldest message not yet handed out: a token for `ack` and
    /// the payload. `None` when there is none.
    fn reserve(&self) -> Option<(u64, Vec<u8>)>;
    /// Forgets a reserved message for good.
    fn ack(&self, token: u64);
    /// Reserves and acks up to `n` messages in batches (as few operations
    /// as the system allows); hands each payload to `each`; returns how
    /// many.
    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize;
    /// Makes everything pushed so far written to the OS (Buffered) or
    /// durable; called at the end of a timed run.
    fn flush(&self);
    /// Reclaims the space of acked messages the way a user of the system
    /// would (compaction, vacuum, purge).
    fn compact(&self);
}

// ---------------------------------------------------------------------
// millpond

struct Millpond {
    store: millpond::Store,
    queue: millpond::Queue,
    group: millpond::Group,
    buffered: bool,
}

impl Millpond {
    fn open(dir: &Path, class: Class, interval: bool) -> Millpond {
        let durability = match class {
            Class::Sync => millpond::Durability::Sync,
            Class::Buffered if interval => {
                millpond::Durability::Interval(Duration::from_millis(100))
            }
            Class::Buffered => millpond::Durability::Buffered,
        };
        let mut options = millpond::Options::default().durability(durability);
        // For A/B runs of the preallocation (0 turns it off).
        if let Some(bytes) = std::env::var("MILLPOND_PREALLOCATE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options = options.preallocate_bytes(bytes);
        }
        let store = millpond::Store::open(dir, options).expect("millpond open");
        let queue = store.queue("q").expect("millpond queue");
        let group = queue
            .group(millpond::DEFAULT_GROUP)
            .expect("millpond group");
        Millpond {
            store,
            queue,
            group,
            buffered: class == Class::Buffered && !interval,
        }
    }
}

impl Peer for Millpond {
    fn push(&self, payload: &[u8]) {
        self.queue.push(payload).expect("millpond push");
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        self.queue
            .push_batch(payloads)
            .expect("millpond push_batch");
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let d = self.group.reserve(LEASE).expect("millpond reserve")?;
        Some((d.id, d.payload))
    }

    fn ack(&self, token: u64) {
        self.group.ack(token).expect("millpond ack");
    }

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let ds = self
            .group
            .reserve_batch(n, LEASE)
            .expect("millpond reserve_batch");
        let ids: Vec<u64> = ds.iter().map(|d| d.id).collect();
        if !ids.is_empty() {
            self.group.ack_batch(&ids).expect("millpond ack_batch");
        }
        for d in &ds {
            each(&d.payload);
        }
        ds.len()
    }

    fn flush(&self) {
        if self.buffered {
            // Like the other buffered peers: written to the OS, no fsync
            // (`Queue::flush` would fsync). Reading the newest message
            // writes the user-space buffer.
            if let Some(newest) = self.queue.next_id().checked_sub(1) {
                self.queue.read(newest).expect("millpond read");
            }
        } else {
            self.queue.flush().expect("millpond flush");
        }
    }

    fn compact(&self) {
        self.store.compact_now().expect("millpond compact_now");
    }
}

// ---------------------------------------------------------------------
// SQLite: a jobs table, reserve by UPDATE ... RETURNING, delete on ack.

struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
}

const SQL_RESERVE: &str = "UPDATE jobs SET state = 1, lease_until = ?1 \
     WHERE id = (SELECT id FROM jobs WHERE state = 0 ORDER BY id LIMIT 1) \
     RETURNING id, body";
const SQL_RESERVE_BATCH: &str = "UPDATE jobs SET state = 1, lease_until = ?1 \
     WHERE id IN (SELECT id FROM jobs WHERE state = 0 ORDER BY id LIMIT ?2) \
     RETURNING id, body";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Sqlite {
    fn open(dir: &Path, class: Class) -> Sqlite {
        std::fs::create_dir_all(dir).expect("sqlite dir");
        let conn = rusqlite::Connection::open(dir.join("jobs.db")).expect("sqlite open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("sqlite wal");
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        let sync = match class {
            Class::Sync => "FULL",
            Class::Buffered => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .expect("sqlite synchronous");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                 id INTEGER PRIMARY KEY,
                 state INTEGER NOT NULL DEFAULT 0,
                 lease_until INTEGER NOT NULL DEFAULT 0,
                 body BLOB NOT NULL
             );",
        )
        .expect("sqlite schema");
        Sqlite {
            conn: Mutex::new(conn),
        }
    }
}

impl Peer for Sqlite {
    fn push(&self, payload: &[u8]) {
        let conn = self.conn.lock().expect("lock");
        conn.prepare_cached("INSERT INTO jobs (body) VALUES (?1)")
            .and_then(|mut s| s.execute([payload]))
            .expect("sqlite insert");
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        let mut conn = self.conn.lock().expect("lock");
        let tx = conn.transaction().expect("sqlite begin");
        {
            let mut s = tx
                .prepare_cached("INSERT INTO jobs (body) VALUES (?1)")
                .expect("sqlite prepare");
            for p in payloads {
                s.execute([p.as_slice()]).expect("sqlite insert");
            }
        }
        tx.commit().expect("sqlite commit");
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let conn = self.conn.lock().expect("lock");
        let mut s = conn.prepare_cached(SQL_RESERVE).expect("sqlite prepare");
        match s.query_row([now_ms() + LEASE.as_millis() as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        }) {
            Ok(row) => Some(row),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(e) => panic!("sqlite reserve: {e}"),
        }
    }

    fn ack(&self, token: u64) {
        let conn = self.conn.lock().expect("lock");
        conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.execute([token as i64]))
            .expect("sqlite delete");
    }

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let mut conn = self.conn.lock().expect("lock");
        // Reserve: one transaction.
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut s = conn
                .prepare_cached(SQL_RESERVE_BATCH)
                .expect("sqlite prepare");
            s.query_map([now_ms() + LEASE.as_millis() as i64, n as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("sqlite reserve batch")
            .collect::<Result<_, _>>()
            .expect("sqlite rows")
        };
        // Ack: a second transaction deleting them.
        let tx = conn.transaction().expect("sqlite begin");
        {
            let mut s = tx
                .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                .expect("sqlite prepare");
            for (id, _) in &rows {
                s.execute([*id]).expect("sqlite delete");
            }
        }
        tx.commit().expect("sqlite commit");
        for (_, body) in &rows {
            each(body);
        }
        rows.len()
    }

    fn flush(&self) {}

    fn compact(&self) {
        let conn = self.conn.lock().expect("lock");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("sqlite checkpoint");
        conn.execute_batch("VACUUM").expect("sqlite vacuum");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("sqlite checkpoint");
    }
}

// ---------------------------------------------------------------------
// queue-file: one file, fsync per operation; no leases.

struct QFile {
    q: Mutex<queue_file::QueueFile>,
}

impl QFile {
    fn open(dir: &Path) -> QFile {
        std::fs::create_dir_all(dir).expect("queue-file dir");
        let q = queue_file::QueueFile::open(dir.join("queue")).expect("queue-file open");
        assert!(q.sync_writes(), "queue-file syncs writes by default");
        QFile { q: Mutex::new(q) }
    }
}

impl Peer for QFile {
    fn push(&self, payload: &[u8]) {
        self.q
            .lock()
            .expect("lock")
            .add(payload)
            .expect("queue-file add");
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        self.q
            .lock()
            .expect("lock")
            .add_n(payloads)
            .expect("queue-file add_n");
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let mut q = self.q.lock().expect("lock");
        let p = q.peek().expect("queue-file peek")?;
        q.remove().expect("queue-file remove");
        Some((0, p))
    }

    fn ack(&self, _token: u64) {}

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let mut q = self.q.lock().expect("lock");
        let mut k = 0;
        for p in q.iter().take(n) {
            each(&p);
            k += 1;
        }
        if k > 0 {
            q.remove_n(k).expect("queue-file remove_n");
        }
        k
    }

    fn flush(&self) {}

    fn compact(&self) {}
}

// ---------------------------------------------------------------------
// yaque: segment files, a write per send, never an fsync; no leases.

struct Yaque {
    sender: Mutex<yaque::Sender>,
    receiver: Mutex<yaque::Receiver>,
}

impl Yaque {
    fn open(dir: &Path) -> Yaque {
        std::fs::create_dir_all(dir).expect("yaque dir");
        // Remove the lock files a killed process left (a no-op otherwise).
        // Not `recovery::recover`: on a queue without segments it points
        // the receiver at segment u64::MAX.
        yaque::recovery::unlock_queue(dir).expect("yaque unlock");
        let sender = yaque::Sender::open(dir).expect("yaque sender");
        let receiver = yaque::Receiver::open(dir).expect("yaque receiver");
        Yaque {
            sender: Mutex::new(sender),
            receiver: Mutex::new(receiver),
        }
    }
}

impl Peer for Yaque {
    fn push(&self, payload: &[u8]) {
        if self.sender.lock().expect("lock").try_send(payload).is_err() {
            panic!("yaque send failed");
        }
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        if self
            .sender
            .lock()
            .expect("lock")
            .try_send_batch(payloads)
            .is_err()
        {
            panic!("yaque send_batch failed");
        }
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let mut r = self.receiver.lock().expect("lock");
        match r.try_recv() {
            Ok(guard) => Some((0, guard.try_into_inner().expect("yaque commit"))),
            Err(yaque::TryRecvError::QueueEmpty) => None,
            Err(yaque::TryRecvError::Io(e)) => panic!("yaque recv: {e}"),
        }
    }

    fn ack(&self, _token: u64) {}

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let mut r = self.receiver.lock().expect("lock");
        match r.try_recv_batch_up_to(n) {
            Ok(guard) => {
                let items = guard.try_into_inner().expect("yaque commit");
                for p in &items {
                    each(p);
                }
                items.len()
            }
            Err(yaque::TryRecvError::QueueEmpty) => 0,
            Err(yaque::TryRecvError::Io(e)) => panic!("yaque recv: {e}"),
        }
    }

    fn flush(&self) {}

    fn compact(&self) {}
}

// ---------------------------------------------------------------------
// fjall: u64 big-endian keys as a FIFO; the consumer cursor in memory.

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
    sync: bool,
    /// Next key a push takes.
    next: AtomicU64,
    /// Next key to hand out.
    head: Mutex<u64>,
}

fn key_u64(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().expect("8-byte key"))
}

impl Fjall {
    fn open(dir: &Path, class: Class) -> Fjall {
        let db = fjall::Database::builder(dir).open().expect("fjall open");
        let ks = db
            .keyspace("q", fjall::KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        let head = ks
            .first_key_value()
            .map_or(0, |g| key_u64(&g.key().expect("fjall key")));
        let next = ks
            .last_key_value()
            .map_or(0, |g| key_u64(&g.key().expect("fjall key")) + 1);
        Fjall {
            db,
            ks,
            sync: class == Class::Sync,
            next: AtomicU64::new(next),
            head: Mutex::new(head),
        }
    }

    fn persist(&self) {
        if self.sync {
            self.db
                .persist(fjall::PersistMode::SyncData)
                .expect("fjall persist");
        }
    }
}

impl Peer for Fjall {
    fn push(&self, payload: &[u8]) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.ks
            .insert(k.to_be_bytes(), payload)
            .expect("fjall insert");
        self.persist();
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        let first = self
            .next
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        let mut b = self.db.batch();
        for (i, p) in payloads.iter().enumerate() {
            b.insert(&self.ks, (first + i as u64).to_be_bytes(), p.as_slice());
        }
        let b = b.durability(self.sync.then_some(fjall::PersistMode::SyncData));
        b.commit().expect("fjall batch");
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let mut head = self.head.lock().expect("lock");
        // A concurrent push may hold a key below `next` not yet inserted.
        for _ in 0..10_000 {
            if *head >= self.next.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(v) = self.ks.get(head.to_be_bytes()).expect("fjall get") {
                let k = *head;
                *head += 1;
                return Some((k, v.to_vec()));
            }
            std::thread::yield_now();
        }
        None
    }

    fn ack(&self, token: u64) {
        self.ks.remove(token.to_be_bytes()).expect("fjall remove");
        self.persist();
    }

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let mut head = self.head.lock().expect("lock");
        let mut b = self.db.batch();
        let mut k = 0;
        let mut last = *head;
        for g in self.ks.range(head.to_be_bytes()..).take(n) {
            let (key, value) = g.into_inner().expect("fjall read");
            last = key_u64(&key);
            each(&value);
            b.remove(&self.ks, key);
            k += 1;
        }
        if k > 0 {
            *head = last + 1;
            let b = b.durability(self.sync.then_some(fjall::PersistMode::SyncData));
            b.commit().expect("fjall batch remove");
        }
        k
    }

    fn flush(&self) {
        self.db
            .persist(fjall::PersistMode::Buffer)
            .expect("fjall persist");
    }

    fn compact(&self) {
        self.ks.rotate_memtable_and_wait().expect("fjall flush");
        self.ks.major_compact().expect("fjall major compaction");
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .expect("fjall persist");
    }
}

// ---------------------------------------------------------------------
// raft-engine: a segmented log of entries, group commit across regions.
//
// Entry indexes must be contiguous within a region (raft group), so each
// push takes a free region (one of `REGIONS`) and appends under its lock;
// concurrent pushes to different regions share the engine's group commit.
// The consumer reads the regions in turn; an ack of the contiguous prefix
// of a region writes a `Compact` command (durable under sync), and
// `purge_expired_files` drops the files nothing refers to any more.

/// Regions (raft groups) messages are spread over.
const REGIONS: usize = 64;

/// The entry type: protobuf's `BytesValue`, whose bytes start with the
/// entry's index (big-endian) followed by the payload.
struct Entry;

impl raft_engine::MessageExt for Entry {
    type Entry = protobuf::well_known_types::BytesValue;

    fn index(e: &Self::Entry) -> u64 {
        u64::from_be_bytes(e.value[..8].try_into().expect("entry index"))
    }
}

#[derive(Default)]
struct AckState {
    /// Every index below this one is acked.
    floor: u64,
    /// Acked indexes above `floor`.
    above: BTreeSet<u64>,
}

struct Raft {
    engine: raft_engine::Engine,
    sync: bool,
    /// Next index to append, per region.
    tails: Vec<Mutex<u64>>,
    /// Next index to hand out, per region, and the region to try first.
    heads: Mutex<(Vec<u64>, usize)>,
    acks: Vec<Mutex<AckState>>,
    spread: AtomicUsize,
}

impl Raft {
    fn open(dir: &Path, class: Class) -> Raft {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            // Files of the size of millpond's segments.
            target_file_size: raft_engine::ReadableSize::mb(64),
            // Purge once 128 MiB are held instead of the default 10 GiB.
            purge_threshold: raft_engine::ReadableSize::mb(128),
            // No compression: the comparison is about storage, not LZ4.
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg).expect("raft-engine open");
        let mut heads = Vec::with_capacity(REGIONS);
        let mut tails = Vec::with_capacity(REGIONS);
        let mut acks = Vec::with_capacity(REGIONS);
        for r in 0..REGIONS as u64 {
            let region = r + 1;
            let first = engine.first_index(region).unwrap_or(1);
            let next = engine.last_index(region).map_or(1, |l| l + 1);
            heads.push(first);
            tails.push(Mutex::new(next));
            acks.push(Mutex::new(AckState {
                floor: first,
                above: BTreeSet::new(),
            }));
        }
        Raft {
            engine,
            sync: class == Class::Sync,
            tails,
            heads: Mutex::new((heads, 0)),
            acks,
            spread: AtomicUsize::new(0),
        }
    }

    /// Appends `payloads` to a region not in use by another push.
    fn append(&self, payloads: &[&[u8]]) {
        let start = self.spread.fetch_add(1, Ordering::Relaxed);
        let (r, mut tail) = (0..REGIONS)
            .map(|i| (start + i) % REGIONS)
            .find_map(|r| self.tails[r].try_lock().ok().map(|t| (r, t)))
            .unwrap_or_else(|| {
                let r = start % REGIONS;
                (r, self.tails[r].lock().expect("lock"))
            });
        let entries: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut e = protobuf::well_known_types::BytesValue::new();
                e.value.reserve(8 + p.len());
                e.value.extend_from_slice(&(*tail + i as u64).to_be_bytes());
                e.value.extend_from_slice(p);
                e
            })
            .collect();
        let mut batch = raft_engine::LogBatch::with_capacity(1);
        batch
            .add_entries::<Entry>(r as u64 + 1, &entries)
            .expect("raft-engine add_entries");
        self.engine
            .write(&mut batch, self.sync)
            .expect("raft-engine write");
        *tail += payloads.len() as u64;
    }

    /// Records acks of `indexes` in `region`; writes a `Compact` command
    /// when the acked prefix grew.
    fn ack_in(&self, region: usize, indexes: impl IntoIterator<Item = u64>) {
        let floor = {
            let mut a = self.acks[region].lock().expect("lock");
            let before = a.floor;
            for i in indexes {
                a.above.insert(i);
            }
            loop {
                let f = a.floor;
                if !a.above.remove(&f) {
                    break;
                }
                a.floor += 1;
            }
            if a.floor == before {
                return;
            }
            a.floor
        };
        let mut batch = raft_engine::LogBatch::with_capacity(1);
        batch.add_command(
            region as u64 + 1,
            raft_engine::Command::Compact { index: floor },
        );
        self.engine
            .write(&mut batch, self.sync)
            .expect("raft-engine compact write");
    }

    /// Fetches up to `n` entries from the first region holding any.
    fn take(&self, n: usize) -> Option<(usize, Vec<protobuf::well_known_types::BytesValue>)> {
        let mut g = self.heads.lock().expect("lock");
        let (heads, next_region) = &mut *g;
        for i in 0..REGIONS {
            let r = (*next_region + i) % REGIONS;
            let Some(last) = self.engine.last_index(r as u64 + 1) else {
                continue;
            };
            if heads[r] > last {
                continue;
            }
            let end = (heads[r] + n as u64).min(last + 1);
            let mut out = Vec::with_capacity((end - heads[r]) as usize);
            self.engine
                .fetch_entries_to::<Entry>(r as u64 + 1, heads[r], end, None, &mut out)
                .expect("raft-engine fetch");
            heads[r] = end;
            *next_region = (r + 1) % REGIONS;
            return Some((r, out));
        }
        None
    }
}

impl Peer for Raft {
    fn push(&self, payload: &[u8]) {
        self.append(&[payload]);
    }

    fn push_batch(&self, payloads: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.append(&refs);
    }

    fn reserve(&self) -> Option<(u64, Vec<u8>)> {
        let (r, mut es) = self.take(1)?;
        let e = es.pop().expect("one entry");
        let index = <Entry as raft_engine::MessageExt>::index(&e);
        Some(((r as u64) << 56 | index, e.value[8..].to_vec()))
    }

    fn ack(&self, token: u64) {
        self.ack_in((token >> 56) as usize, [token & ((1 << 56) - 1)]);
    }

    fn drain_batch(&self, n: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let Some((r, es)) = self.take(n) else {
            return 0;
        };
        for e in &es {
            each(&e.value[8..]);
        }
        self.ack_in(
            r,
            es.iter()
                .map(<Entry as raft_engine::MessageExt>::index)
                .collect::<Vec<_>>(),
        );
        es.len()
    }

    fn flush(&self) {}

    fn compact(&self) {
        self.engine
            .purge_expired_files()
            .expect("raft-engine purge");
        if self.sync {
            self.engine.sync().expect("raft-engine sync");
        }
    }
}

/// Allocated bytes (blocks, not apparent length) of every file under
/// `dir`, recursively.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}
