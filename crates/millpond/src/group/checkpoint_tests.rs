//! A checkpoint's file is written without the group lock: while one is
//! being written, other threads reserve and ack; the store then reopens
//! with every ack kept.

use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::fs::{Fs, FsFile, LockGuard, MemFs, OpenMode};
use crate::{Durability, GroupOptions, Options, Store};

const LEASE: Duration = Duration::from_secs(60);

/// Holds the rename that installs a checkpoint until released.
#[derive(Debug, Default)]
struct Gate {
    /// (armed, a rename is waiting, released)
    state: Mutex<(bool, bool, bool)>,
    cv: Condvar,
}

/// A [`MemFs`] whose checkpoint renames wait at the gate while it is armed.
#[derive(Debug)]
struct GatedFs {
    inner: MemFs,
    gate: Arc<Gate>,
}

impl Fs for GatedFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        self.inner.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.file_name().is_some_and(|n| n == "checkpoint") {
            let mut st = self.gate.state.lock().unwrap();
            if st.0 && !st.2 {
                st.1 = true;
                self.gate.cv.notify_all();
                while !st.2 {
                    st = self.gate.cv.wait(st).unwrap();
                }
            }
        }
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

fn open(fs: &Arc<GatedFs>) -> Store {
    Store::open(
        "/store",
        Options::default()
            .fs(fs.clone())
            .durability(Durability::Buffered)
            .compact_interval(None),
    )
    .unwrap()
}

#[test]
fn reserve_and_ack_proceed_while_a_checkpoint_is_written() {
    let gate = Arc::new(Gate::default());
    let fs = Arc::new(GatedFs {
        inner: MemFs::new(),
        gate: gate.clone(),
    });
    let opts = GroupOptions {
        checkpoint_journal_bytes: 1024,
        ..GroupOptions::default()
    };
    let store = open(&fs);
    let q = store.queue("q").unwrap();
    let g = q.group_with("g", opts.clone()).unwrap();
    let ids = q.push_batch(&vec![b"m".as_slice(); 200]).unwrap();
    gate.state.lock().unwrap().0 = true;

    // Acks until one of them rotates the journal and blocks in the
    // checkpoint's rename.
    let writer = {
        let g = g.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for _ in 0..100 {
                let d = g.reserve(LEASE).unwrap().expect("ready");
                g.ack(d.id).unwrap();
                acked.push(d.id);
            }
            acked
        })
    };
    {
        let mut st = gate.state.lock().unwrap();
        while !st.1 {
            let (s, t) = gate.cv.wait_timeout(st, Duration::from_secs(10)).unwrap();
            assert!(!t.timed_out(), "no checkpoint was written");
            st = s;
        }
    }
    // The group lock is free: another thread reserves and acks.
    let (tx, rx) = mpsc::channel();
    let other = {
        let g = g.clone();
        std::thread::spawn(move || {
            let d = g.reserve(LEASE).unwrap().expect("ready");
            g.ack(d.id).unwrap();
            tx.send(d.id).unwrap();
        })
    };
    let got = rx.recv_timeout(Duration::from_secs(10));
    {
        let mut st = gate.state.lock().unwrap();
        st.2 = true;
        gate.cv.notify_all();
    }
    let other_id = got.expect("reserve and ack waited for the checkpoint's write");
    other.join().unwrap();
    let mut acked = writer.join().unwrap();
    acked.push(other_id);
    acked.sort_unstable();
    assert_eq!(acked, (ids.start..ids.start + 101).collect::<Vec<_>>());
    drop(g);
    drop(q);
    store.close().unwrap();

    // Reopened: the 101 acks hold, the other 99 messages are delivered.
    let store = open(&fs);
    let g = store.queue("q").unwrap().group_with("g", opts).unwrap();
    let mut rest = Vec::new();
    while let Some(d) = g.reserve(LEASE).unwrap() {
        g.ack(d.id).unwrap();
        rest.push(d.id);
    }
    assert_eq!(rest, (ids.start + 101..ids.end).collect::<Vec<_>>());
}
