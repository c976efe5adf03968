//! Failing disks and bad input get clear errors and lose nothing
//! (guarantees 5 and 10): fsync and write failures poison the queue, a full
//! disk, files from a newer format version, a second owner of the store,
//! oversize messages and bad queue names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use millpond::fs::{CrashOptions, Fault, FaultError, FaultKind, Fs, OpenMode, SimFs};
use millpond::{Error, Options, Queue, STORE_VERSION, Store};
use millpond_suite::{on_each_fs, payload};

const STORE: &str = "/store";

fn sim_options(sim: &SimFs) -> Options {
    Options::default()
        .fs(Arc::new(sim.clone()))
        .segment_bytes_max(4096)
        .index_interval_bytes(256)
}

/// Payload `i` of the tests here: 100 bytes, so a 4 KiB segment holds 31.
fn msg(i: u64) -> Vec<u8> {
    payload(i, 100)
}

/// A store on `sim` whose queue `q` holds ids `1..=n` with payloads `msg(id)`.
fn filled(sim: &SimFs, n: u64) -> (Store, Queue) {
    let store = Store::open(STORE, sim_options(sim)).unwrap();
    let q = store.queue("q").unwrap();
    for i in 1..=n {
        assert_eq!(q.push(msg(i)).unwrap(), i);
    }
    (store, q)
}

/// Checks that `q` reads ids `1..=n` as `msg(id)`.
fn assert_holds(q: &Queue, n: u64, context: &str) {
    for i in 1..=n {
        let m = q
            .read(i)
            .unwrap_or_else(|e| panic!("{context}: read({i}): {e}"));
        assert_eq!(m.map(|m| m.payload), Some(msg(i)), "{context}: message {i}");
    }
    let ids: Vec<u64> = q
        .reader(1)
        .take(n as usize)
        .map(|m| m.unwrap().id)
        .collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "{context}: reader");
}

/// Reopens the store on `fs` and checks ids `1..=n` are there, that at most
/// `maybe` more (unacknowledged) messages follow, and that the next push
/// continues the log. Returns the id the next push got.
fn reopen_holds(fs: &SimFs, n: u64, maybe: &[Vec<u8>], context: &str) -> u64 {
    let store = Store::open(STORE, sim_options(fs))
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let q = store.queue("q").unwrap();
    assert_holds(&q, n, context);
    let next = q.next_id();
    assert!(
        next > n && next <= n + 1 + maybe.len() as u64,
        "{context}: next_id {next} after {n} acknowledged"
    );
    for id in n + 1..next {
        let m = q.read(id).unwrap().expect("below next_id");
        assert_eq!(
            m.payload,
            maybe[(id - n - 1) as usize],
            "{context}: unacknowledged id {id} holds other bytes"
        );
    }
    let id = q.push(b"after reopen").unwrap();
    assert_eq!(id, next, "{context}: push after reopen");
    assert_eq!(q.read(id).unwrap().unwrap().payload, b"after reopen");
    id
}

/// After a failed push: the queue refuses writes with `Poisoned` naming the
/// failure, keeps serving reads, and does not show the failed message.
fn assert_poisoned(q: &Queue, failure: &Error, acked: u64) {
    let cause = failure.to_string();
    for attempt in [
        q.push(b"refused"),
        q.push_batch(&[b"a", b"b"]).map(|r| r.start),
    ] {
        match attempt {
            Err(Error::Poisoned {
                queue,
                cause: poisoned_cause,
            }) => {
                assert_eq!(queue, "q");
                assert_eq!(&*poisoned_cause, cause, "the cause is the original failure");
            }
            other => panic!("a push after {failure:?} gave {other:?}, want Poisoned"),
        }
    }
    let poisoned = q.push(b"refused").unwrap_err();
    let shown = poisoned.to_string();
    assert!(
        shown.contains(&cause) && shown.contains("reopen"),
        "{shown}"
    );
    assert!(matches!(q.flush(), Err(Error::Poisoned { .. })));
    assert_holds(q, acked, "reads while poisoned");
    assert_eq!(
        q.read(acked + 1).unwrap(),
        None,
        "the failed push is not visible"
    );
}

fn segment_path(first_id: u64) -> PathBuf {
    Path::new(STORE)
        .join("queues/q")
        .join(format!("{first_id:020}.seg"))
}

#[test]
fn failed_fsync_poisons_and_reopen_recovers() {
    let sim = SimFs::new(1);
    let (store, q) = filled(&sim, 10);
    sim.inject(Fault {
        kind: FaultKind::Sync,
        nth: 1,
        error: FaultError::Eio,
    });
    let lost = b"fsync of this push fails".to_vec();
    let err = q.push(&lost).unwrap_err();
    match &err {
        Error::Io { op, path, source } => {
            assert_eq!(*op, "fsync segment");
            assert_eq!(*path, segment_path(1));
            assert_eq!(source.raw_os_error(), Some(5));
        }
        other => panic!("want Io, got {other:?}"),
    }
    assert_eq!(sim.stats().faults_injected, 1);
    assert_poisoned(&q, &err, 10);
    drop(q);
    assert!(
        matches!(store.close(), Err(Error::Poisoned { .. })),
        "close reports the poisoning"
    );
    drop(store);

    let image = sim.crash_image(CrashOptions::clean());
    assert_eq!(reopen_holds(&image, 10, &[], "clean image"), 11);
    // Reopening the same file system (the process restarted, the power
    // stayed on) may find the unacknowledged message in the page cache.
    reopen_holds(&sim, 10, &[lost], "same file system");
}

#[test]
fn failed_write_poisons_and_reopen_recovers() {
    let sim = SimFs::new(2);
    let (store, q) = filled(&sim, 10);
    sim.inject(Fault {
        kind: FaultKind::Write,
        nth: 1,
        error: FaultError::Eio,
    });
    let err = q.push_batch(&[b"x".as_slice(), b"y"]).unwrap_err();
    match &err {
        Error::Io { op, path, source } => {
            assert_eq!(*op, "write segment");
            assert_eq!(*path, segment_path(1));
            assert_eq!(source.raw_os_error(), Some(5));
        }
        other => panic!("want Io, got {other:?}"),
    }
    assert_poisoned(&q, &err, 10);
    drop(q);
    drop(store);
    assert_eq!(
        reopen_holds(
            &sim.crash_image(CrashOptions::harsh()),
            10,
            &[],
            "harsh image"
        ),
        11
    );
    assert_eq!(reopen_holds(&sim, 10, &[], "same file system"), 11);
}

/// Each step of rolling to a new segment (fsync of the old one, its index
/// file written atomically, the new segment created durably) fails in turn.
#[test]
fn failure_while_rolling_a_segment_poisons_and_reopen_recovers() {
    // (kind, nth): which call of that kind the roll makes fails.
    let steps = [
        (FaultKind::Sync, 1),    // fsync of the sealed segment
        (FaultKind::Create, 1),  // index temporary file
        (FaultKind::Write, 1),   // index bytes
        (FaultKind::Sync, 2),    // index fsync
        (FaultKind::Rename, 1),  // index rename
        (FaultKind::SyncDir, 1), // directory after the index rename
        (FaultKind::Create, 2),  // new segment
        (FaultKind::Write, 2),   // new segment header
        (FaultKind::Sync, 3),    // new segment fsync
        (FaultKind::SyncDir, 2), // directory after the new segment
        (FaultKind::Write, 3),   // the pushed frame
        (FaultKind::Sync, 4),    // its fsync
    ];
    for (seed, (kind, nth)) in steps.into_iter().enumerate() {
        let context = format!("{kind:?} #{nth}");
        let sim = SimFs::new(100 + seed as u64);
        let (store, q) = filled(&sim, 31);
        assert_eq!(
            q.log_stats().unwrap().segments,
            1,
            "31 messages fit one segment"
        );
        let faults_before = sim.stats().faults_injected;
        sim.inject(Fault {
            kind,
            nth,
            error: FaultError::Eio,
        });
        let err = q.push(msg(32)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{context}: {err:?}");
        assert_eq!(sim.stats().faults_injected, faults_before + 1, "{context}");
        assert_poisoned(&q, &err, 31);
        drop(q);
        drop(store);
        let clean = sim.crash_image(CrashOptions::clean());
        let got = reopen_holds(&clean, 31, &[], &format!("{context}, clean image"));
        assert_eq!(
            got, 32,
            "{context}: nothing unsynced survives a clean image"
        );
        // Unsynced bytes of the failed push may land in a harsh image.
        let harsh = sim.crash_image(CrashOptions::harsh());
        reopen_holds(&harsh, 31, &[msg(32)], &format!("{context}, harsh image"));
        reopen_holds(
            &sim,
            31,
            &[msg(32)],
            &format!("{context}, same file system"),
        );
    }
}

#[test]
fn disk_full_is_reported_and_loses_nothing() {
    for seed in 0..8 {
        let sim = SimFs::new(seed);
        let (store, q) = filled(&sim, 10);
        sim.inject(Fault {
            kind: FaultKind::Write,
            nth: 1,
            error: FaultError::Enospc,
        });
        let batch = [msg(11), msg(12)];
        let err = q.push_batch(&batch).unwrap_err();
        match &err {
            Error::DiskFull { op, path } => {
                assert_eq!(*op, "write segment");
                assert_eq!(*path, segment_path(1));
            }
            other => panic!("seed {seed}: want DiskFull, got {other:?}"),
        }
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_poisoned(&q, &err, 10);
        drop(q);
        drop(store);
        // The short write left a prefix of the batch in the file: reopening
        // the same file system truncates what is partial.
        let context = format!("seed {seed}");
        let clean = sim.crash_image(CrashOptions::clean());
        assert_eq!(reopen_holds(&clean, 10, &[], &context), 11);
        reopen_holds(&sim, 10, &batch, &context);
    }
}

/// Reads a whole file through `fs`.
fn read_file(fs: &dyn Fs, path: &Path) -> Vec<u8> {
    fs.open(path, OpenMode::Read)
        .unwrap()
        .map()
        .unwrap()
        .to_vec()
}

/// Replaces a file's contents through `fs`.
fn write_file(fs: &dyn Fs, path: &Path, bytes: &[u8]) {
    let f = fs.open(path, OpenMode::CreateTruncate).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
}

/// Every file under `dir` with its bytes, recursively.
fn tree(fs: &dyn Fs, dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for name in fs.list_dir(dir).unwrap() {
        let path = dir.join(&name);
        match fs.list_dir(&path) {
            Ok(_) => {
                out.push((path.clone(), None));
                out.extend(tree(fs, &path));
            }
            Err(_) => out.push((path.clone(), Some(read_file(fs, &path)))),
        }
    }
    out
}

/// Sets the u32 version at 8..12 and recomputes the CRC over `[0, crc_at)`
/// into `crc_at..crc_at + 4`.
fn with_version(mut bytes: Vec<u8>, version: u32, crc_at: usize) -> Vec<u8> {
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `result` is `UnsupportedVersion` for `file`: found the version one
/// above what this build reads (2 for every file but the index, 3 for it).
fn assert_unsupported(result: Result<impl std::fmt::Debug, Error>, file: &Path) {
    let supported = if file.extension().is_some_and(|e| e == "idx") {
        millpond::log::index::VERSION
    } else {
        1
    };
    match result {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported: s,
        }) => {
            assert_eq!(path, file);
            assert_eq!((found, s), (supported + 1, supported));
        }
        other => panic!("{}: want UnsupportedVersion, got {other:?}", file.display()),
    }
}

#[test]
fn newer_store_meta_is_refused_untouched() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let fs = store.fs().clone();
        store.queue("q").unwrap().push(b"kept").unwrap();
        store.close().unwrap();
        drop(store);
        let meta = place.path.join("millpond.store");
        let bytes = read_file(&*fs, &meta);
        assert_eq!(bytes.len(), 16);
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            STORE_VERSION
        );
        write_file(&*fs, &meta, &with_version(bytes, 2, 12));
        let before = tree(&*fs, &place.path);
        let err = Store::open(&place.path, place.options.clone());
        assert_unsupported(err, &meta);
        let err = Store::open(&place.path, place.options.clone()).unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
        assert_eq!(tree(&*fs, &place.path), before, "nothing was modified");
    });
}

#[test]
fn newer_segment_and_index_are_refused_untouched() {
    on_each_fs(|place| {
        let options = place.options.clone().segment_bytes_max(4096);
        let store = Store::open(&place.path, options.clone()).unwrap();
        let fs = store.fs().clone();
        let q = store.queue("q").unwrap();
        for i in 1..=100 {
            q.push(msg(i)).unwrap();
        }
        assert_eq!(q.log_stats().unwrap().segments, 4);
        drop(q);
        store.close().unwrap();
        drop(store);
        let dir = place.path.join("queues/q");
        let seg = |id: u64| dir.join(format!("{id:020}.seg"));
        let idx = |id: u64| dir.join(format!("{id:020}.idx"));
        let tail = 94;
        assert!(
            fs.exists(&seg(tail)).unwrap(),
            "segments start at 1, 32, 63, 94"
        );
        let pristine = tree(&*fs, &place.path);

        // The tail segment: the open refuses.
        let header = read_file(&*fs, &seg(tail));
        assert_eq!(&header[..32], millpond::log::segment::encode_header(tail));
        let mut newer = with_version(header[..32].to_vec(), 2, 28);
        newer.extend_from_slice(&header[32..]);
        write_file(&*fs, &seg(tail), &newer);
        let before = tree(&*fs, &place.path);
        assert_unsupported(Store::open(&place.path, options.clone()), &seg(tail));
        assert_eq!(
            tree(&*fs, &place.path),
            before,
            "tail: nothing was modified"
        );
        write_file(&*fs, &seg(tail), &header);

        // The tail's index file: refused too.
        let index = read_file(&*fs, &idx(tail));
        assert_eq!(millpond::log::index::VERSION, 2);
        let newer = with_version(index.clone(), 3, 52);
        write_file(&*fs, &idx(tail), &newer);
        let before = tree(&*fs, &place.path);
        assert_unsupported(Store::open(&place.path, options.clone()), &idx(tail));
        assert_eq!(
            tree(&*fs, &place.path),
            before,
            "index: nothing was modified"
        );
        write_file(&*fs, &idx(tail), &index);
        assert_eq!(tree(&*fs, &place.path), pristine);

        // A sealed segment: the store opens (sealed segments are read
        // lazily), reading it is refused, the rest stays readable.
        let header = read_file(&*fs, &seg(1));
        let mut newer = with_version(header[..32].to_vec(), 2, 28);
        newer.extend_from_slice(&header[32..]);
        write_file(&*fs, &seg(1), &newer);
        let before = tree(&*fs, &place.path);
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        assert_unsupported(q.read(5), &seg(1));
        assert_unsupported(q.reader(1).next().unwrap(), &seg(1));
        for i in 32..=100 {
            assert_eq!(q.read(i).unwrap().unwrap().payload, msg(i), "id {i}");
        }
        assert_eq!(q.push(b"new").unwrap(), 101);
        drop(q);
        store.close().unwrap();
        drop(store);
        assert_eq!(
            read_file(&*fs, &seg(1)),
            newer,
            "the newer segment was not modified"
        );
        assert_eq!(read_file(&*fs, &idx(1)), {
            let (path, bytes) = before.iter().find(|(p, _)| *p == idx(1)).unwrap();
            assert_eq!(*path, idx(1));
            bytes.clone().unwrap()
        });
    });
}

#[test]
fn second_opener_is_locked_out_until_the_first_closes() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        assert_eq!(q.push(b"one").unwrap(), 1);
        let lock = place.path.join("LOCK");
        for _ in 0..2 {
            match Store::open(&place.path, place.options.clone()) {
                Err(e @ Error::Locked { .. }) => {
                    let Error::Locked { path } = &e else {
                        unreachable!()
                    };
                    assert_eq!(*path, lock);
                    assert!(path.ends_with("LOCK"));
                    assert!(e.to_string().contains("locked"), "{e}");
                }
                other => panic!("second open: want Locked, got {other:?}"),
            }
        }
        // The refused opener changed nothing for the owner.
        assert_eq!(q.push(b"two").unwrap(), 2);
        store.close().unwrap();
        assert!(matches!(q.push(b"closed"), Err(Error::Closed)));

        // Closed (handles still alive): the lock is free.
        let second = Store::open(&place.path, place.options.clone()).unwrap();
        let q2 = second.queue("q").unwrap();
        assert_eq!(q2.read(2).unwrap().unwrap().payload, b"two");
        assert_eq!(q2.push(b"three").unwrap(), 3);
        drop(q);
        drop(store);
        assert!(matches!(
            Store::open(&place.path, place.options.clone()),
            Err(Error::Locked { .. })
        ));
        // Dropped without close: the lock is free too.
        drop(q2);
        drop(second);
        let third = Store::open(&place.path, place.options.clone()).unwrap();
        assert_eq!(third.queue("q").unwrap().next_id(), 4);
    });
}

/// Runs the kill child's `open-once` on `store`; returns its output line.
fn open_in_another_process(store: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_millpond-kill-child"))
        .arg("open-once")
        .arg(store)
        .output()
        .expect("run the child");
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn second_process_is_locked_out_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path, Options::default()).unwrap();
    store.queue("q").unwrap().push(b"mine").unwrap();
    assert_eq!(
        open_in_another_process(&path),
        format!("locked {}", path.join("LOCK").display())
    );
    store.close().unwrap();
    assert_eq!(open_in_another_process(&path), "opened");
    drop(store);
    let store = Store::open(&path, Options::default()).unwrap();
    assert_eq!(
        store.queue("q").unwrap().read(1).unwrap().unwrap().payload,
        b"mine"
    );
}

#[test]
fn oversize_messages_are_refused_whole() {
    on_each_fs(|place| {
        let options = place.options.clone().message_bytes_max(1000);
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        for i in 1..=10 {
            q.push(msg(i)).unwrap();
        }
        let stats = q.log_stats().unwrap();
        let too_large = |r: Result<u64, Error>| match r {
            Err(Error::MessageTooLarge { size, max }) => (size, max),
            other => panic!("want MessageTooLarge, got {other:?}"),
        };
        assert_eq!(too_large(q.push(vec![7; 1001])), (1001, 1000));
        assert_eq!(too_large(q.push(vec![7; 1 << 20])), (1 << 20, 1000));
        let batch = [vec![1; 10], vec![2; 1000], vec![3; 5000], vec![4; 5]];
        assert_eq!(
            too_large(q.push_batch(&batch).map(|r| r.start)),
            (5000, 1000)
        );
        let err = q.push(vec![0; 1001]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message of 1001 bytes exceeds message_bytes_max (1000 bytes)"
        );
        assert_eq!(q.log_stats().unwrap(), stats, "nothing was written");
        assert_eq!(q.next_id(), 11);
        assert_eq!(q.reader(1).count(), 10);
        // The limit is inclusive, and the queue is not poisoned.
        assert_eq!(q.push(vec![9; 1000]).unwrap(), 11);
        drop(q);
        store.close().unwrap();
        drop(store);
        let store = Store::open(&place.path, options).unwrap();
        let q = store.queue("q").unwrap();
        assert_eq!(q.next_id(), 12);
        let all: Vec<_> = q.reader(1).map(|m| m.unwrap().payload).collect();
        assert_eq!(all.len(), 11);
        assert_eq!(all[10], vec![9; 1000]);
        assert_eq!(all[..10], (1..=10).map(msg).collect::<Vec<_>>());
    });
}

#[test]
fn bad_queue_names_are_refused_and_create_nothing() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let fs = store.fs().clone();
        store.queue("good").unwrap().push(b"x").unwrap();
        let before = tree(&*fs, &place.path);
        let long = "x".repeat(129);
        let cases = [
            ("", "must not be empty"),
            ("..", "must not be `.` or `..`"),
            (".", "must not be `.` or `..`"),
            ("a/b", "must not contain a path separator"),
            ("../escape", "must not contain a path separator"),
            ("a\\b", "must not contain a path separator"),
            (long.as_str(), "must be at most 128 bytes"),
            (
                "sp ace",
                "may only contain ASCII letters, digits, `.`, `_` and `-`",
            ),
            (
                "é",
                "may only contain ASCII letters, digits, `.`, `_` and `-`",
            ),
        ];
        for (name, want) in cases {
            match store.queue(name) {
                Err(e @ Error::InvalidName { .. }) => {
                    let Error::InvalidName { name: echoed, rule } = &e else {
                        unreachable!()
                    };
                    assert_eq!(*rule, want, "{name:?}");
                    assert_eq!(echoed, name);
                    assert!(e.to_string().contains(want), "{e}");
                }
                other => panic!("{name:?}: want InvalidName, got {other:?}"),
            }
        }
        assert_eq!(store.queue_names(), ["good"]);
        assert_eq!(tree(&*fs, &place.path), before, "nothing was created");
        if let Some(parent) = place.path.parent()
            && fs.exists(&parent.join("escape")).unwrap()
        {
            panic!("`../escape` created a directory outside the store");
        }
        // Exactly 128 bytes is fine.
        assert!(store.queue(&"y".repeat(128)).is_ok());
    });
}
