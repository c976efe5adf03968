//! The segment recovery target: arbitrary bytes as a segment file of an
//! in-memory store, as the newest (tail) segment and as a sealed one.
//!
//! The expected outcome is derived from `docs/format.md` and from
//! `segment::scan`, whose own result is first checked for consistency
//! (valid frames and damaged ranges tile the scanned bytes). The store is
//! then checked against it through every way of reading: recovery report,
//! file length after truncation, the reader, point reads, a consumer group,
//! and a reopen after a push.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{Fs, MemFs, OpenMode};
use millpond::log::frame::{self, Decoded};
use millpond::log::segment::{self, HeaderError, Scan};
use millpond::{Error, ManualClock, Message, Options, Queue, RecoveryMode, Store};

use super::decoders::PAYLOAD_LEN_MAX;
use super::{crc32, le64};

const STORE: &str = "/fuzz/store";
const QUEUE: &str = "q";
/// Small, so a few hundred bytes of frames make several index entries.
const INDEX_INTERVAL: u32 = 64;
/// The clock of every store here: frames not before it are ready.
const NOW_MS: u64 = 1_700_000_000_000;
/// Distance from a sealed segment's first id to the tail segment's.
const SEALED_SPAN: u64 = 1 << 41;

/// What reading a queue yields, one item per `next()` of the reader.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A message: id, timestamp, priority, not-before, payload.
    Message(u64, u64, u32, u64, Vec<u8>),
    /// A corruption error naming the segment and this offset.
    Damage(u64),
    /// The segment's header names a newer format version.
    Unsupported(u32),
}

impl Event {
    fn message(m: Message) -> Event {
        Event::Message(m.id, m.timestamp_ms, m.priority, m.not_before_ms, m.payload)
    }

    fn frame(f: &frame::FrameRef<'_>) -> Event {
        Event::Message(
            f.id,
            f.timestamp_ms,
            f.attrs.priority,
            f.attrs.not_before_ms,
            f.payload.to_vec(),
        )
    }

    fn id(&self) -> Option<u64> {
        match self {
            Event::Message(id, ..) => Some(*id),
            _ => None,
        }
    }
}

/// Segment recovery from arbitrary bytes; see the module documentation.
/// The segment's first id is read from the bytes' header field (1 when
/// there are too few bytes), so the file name agrees with a valid header.
pub fn segment_recover(data: &[u8]) {
    let first_id = if data.len() >= 24 { le64(data, 16) } else { 1 };
    for mode in [RecoveryMode::Skip, RecoveryMode::Fail] {
        check_tail(data, first_id, mode);
    }
    // The tail segment holds a message with its first id, and no message
    // has the id `u64::MAX`.
    if let Some(tail_id) = first_id.checked_add(SEALED_SPAN).filter(|&t| t < u64::MAX) {
        let skip = check_sealed(data, first_id, tail_id, RecoveryMode::Skip);
        let fail = check_sealed(data, first_id, tail_id, RecoveryMode::Fail);
        assert_eq!(
            skip, fail,
            "a sealed segment reads the same under both modes"
        );
    }
}

fn seg_path(first_id: u64) -> PathBuf {
    Path::new(STORE)
        .join("queues")
        .join(QUEUE)
        .join(segment::file_name(first_id))
}

fn options(fs: &MemFs, mode: RecoveryMode) -> Options {
    Options::default()
        .fs(Arc::new(fs.clone()))
        .clock(Arc::new(ManualClock::new(NOW_MS)))
        .compact_interval(None)
        .index_interval_bytes(INDEX_INTERVAL)
        // Small, so a push after recovery extends the file cheaply and
        // the close cuts the zeros again.
        .preallocate_bytes(4096)
        .recovery_mode(mode)
}

fn plant(files: &[(u64, &[u8])]) -> MemFs {
    let fs = MemFs::new();
    let dir = Path::new(STORE).join("queues").join(QUEUE);
    fs.create_dir_all(&dir).expect("create queue directory");
    for &(first_id, bytes) in files {
        let f = fs
            .open(&seg_path(first_id), OpenMode::CreateTruncate)
            .expect("create segment");
        f.write_all_at(bytes, 0).expect("write segment");
        f.sync_data().expect("sync segment");
    }
    fs
}

/// Scans `bytes` as `segment::scan` does for recovery, checks the scan is
/// consistent, and returns it with the frames and damage it found, in
/// order.
fn walk(bytes: &[u8], first_id: u64) -> (Scan, Vec<Event>) {
    let s = segment::scan(
        bytes,
        segment::HEADER_LEN,
        first_id,
        None,
        u64::from(INDEX_INTERVAL),
        PAYLOAD_LEN_MAX,
    );
    let mut events = Vec::new();
    let mut damage = s.damage.iter().peekable();
    let mut pos = segment::HEADER_LEN as usize;
    let mut next_id = first_id;
    let mut positions = BTreeSet::new();
    while (pos as u64) < s.end {
        if let Some(d) = damage.next_if(|d| d.offset == pos as u64) {
            assert!(d.len > 0, "empty damaged range at {pos}");
            events.push(Event::Damage(d.offset));
            pos += d.len as usize;
            continue;
        }
        match frame::decode(&bytes[pos..], PAYLOAD_LEN_MAX) {
            Decoded::Frame(f) if f.id >= next_id => {
                events.push(Event::frame(&f));
                positions.insert(pos as u64);
                next_id = f.id + 1;
                pos += f.len;
            }
            other => panic!("scan counted bytes at {pos} as a frame: {other:?}"),
        }
    }
    assert_eq!(
        pos as u64, s.end,
        "frames and damage overrun the scan's end"
    );
    assert!(damage.next().is_none(), "damage after the scan's end");
    assert_eq!(s.next_id, next_id);
    let frames = events.iter().filter(|e| e.id().is_some()).count();
    assert_eq!(s.frames, frames as u64);
    assert!(s.entries.iter().all(|e| positions.contains(&e.1)));
    assert!(
        s.entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
    );
    match (&s.torn, &s.newer) {
        (Some(_), Some(_)) => panic!("a scan both torn and stopped at a newer frame"),
        (Some((offset, len, _)), None) => {
            assert_eq!(*offset, s.end);
            assert_eq!(offset + len, bytes.len() as u64);
            assert!(*len > 0);
        }
        (None, Some((offset, flags))) => {
            assert_eq!(*offset, s.end);
            assert!(matches!(
                frame::decode(&bytes[*offset as usize..], PAYLOAD_LEN_MAX),
                Decoded::Bad(frame::Bad::Flags(f)) if f == *flags
            ));
        }
        (None, None) => assert_eq!(s.end, bytes.len() as u64),
    }
    (s, events)
}

/// What opening a store whose newest segment holds the bytes must do.
#[derive(Debug)]
enum Expect {
    Fails(Event),
    Opens {
        events: Vec<Event>,
        /// The segment file's length afterwards.
        len: u64,
        next_id: u64,
        torn: Option<(u64, u64)>,
        /// Zeros after the last frame, kept in place.
        zero_tail: u64,
        damaged: Vec<(u64, u64)>,
        header_rewritten: bool,
    },
}

fn expect_tail(bytes: &[u8], first_id: u64, mode: RecoveryMode) -> Expect {
    let header_len = segment::HEADER_LEN;
    if (bytes.len() as u64) < header_len || bytes.iter().all(|&b| b == 0) {
        return Expect::Opens {
            events: Vec::new(),
            len: header_len,
            next_id: first_id,
            torn: None,
            zero_tail: 0,
            damaged: Vec::new(),
            header_rewritten: true,
        };
    }
    match segment::decode_header(bytes, first_id) {
        Ok(()) => {}
        Err(HeaderError::Version(v)) => return Expect::Fails(Event::Unsupported(v)),
        Err(_) => return Expect::Fails(Event::Damage(0)),
    }
    let (mut s, mut events) = walk(bytes, first_id);
    // A first damaged range that is a lost sector of unsynced writes (see
    // `lost_sector`) reached the disk out of order: cut there, as at a torn
    // tail.
    if let Some(d) = s.damage.first()
        && lost_sector(bytes, d.offset as usize, d.len as usize)
    {
        let cut = d.offset;
        (s, events) = walk(&bytes[..cut as usize], first_id);
        assert!(s.damage.is_empty() && s.newer.is_none() && s.end == cut);
        s.torn = Some((cut, bytes.len() as u64 - cut, String::new()));
    }
    if let Some((offset, _)) = s.newer {
        return Expect::Fails(Event::Damage(offset));
    }
    if let (Some(d), RecoveryMode::Fail) = (s.damage.first(), mode) {
        return Expect::Fails(Event::Damage(d.offset));
    }
    // Zeros after the last frame are preallocated space (or unsynced
    // writes that reached the disk as zeros): kept, not a torn tail.
    let mut torn = s.torn.map(|t| (t.0, t.1));
    let mut zero_tail = 0;
    if let Some((offset, n)) = torn
        && bytes[offset as usize..].iter().all(|&b| b == 0)
    {
        torn = None;
        zero_tail = n;
    }
    Expect::Opens {
        events,
        len: s.end + zero_tail,
        next_id: s.next_id,
        torn,
        zero_tail,
        damaged: s.damage.iter().map(|d| (d.offset, d.len)).collect(),
        header_rewritten: false,
    }
}

/// Whether the damaged range at `offset` is a 512-byte sector of unsynced
/// writes that did not land while the next did: all zeros; or zeros from
/// `offset` through the next sector boundary, when that is 4 bytes or more
/// on; or, when the boundary is 1-3 bytes on (inside the frame's CRC), a
/// stored CRC whose first bytes are zero and whose others match the CRC of
/// the rest of the frame.
fn lost_sector(bytes: &[u8], offset: usize, len: usize) -> bool {
    let range = &bytes[offset..offset + len];
    let zeros = range.iter().take_while(|&&b| b == 0).count();
    if zeros == range.len() {
        return true;
    }
    let lost = 512 - offset % 512;
    if lost >= 4 {
        return zeros >= lost;
    }
    let Some(header) = bytes.get(offset..offset + 28) else {
        return false;
    };
    let payload = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let flags = u32::from_le_bytes(header[24..28].try_into().unwrap());
    let attrs = if flags & 1 != 0 { 4 } else { 0 } + if flags & 2 != 0 { 8 } else { 0 };
    let Some(body) = bytes.get(offset + 4..offset + 28 + attrs + payload) else {
        return false;
    };
    let computed = crc32(body).to_le_bytes();
    header[..lost].iter().all(|&b| b == 0) && header[lost..4] == computed[lost..]
}

/// The event an open or read error stands for; panics on any other error.
fn error_event(e: &Error, seg: &Path) -> Event {
    match e {
        Error::Corruption { path, offset, .. } if path == seg => Event::Damage(*offset),
        Error::UnsupportedVersion { path, found, .. } if path == seg => Event::Unsupported(*found),
        other => panic!("unexpected error for segment {}: {other}", seg.display()),
    }
}

fn check_tail(data: &[u8], first_id: u64, mode: RecoveryMode) {
    let bound = 64 + 2 * data.len();
    let expect = expect_tail(data, first_id, mode);
    let fs = plant(&[(first_id, data)]);
    let seg = seg_path(first_id);
    let (store, events, next_id) = match (expect, Store::open(STORE, options(&fs, mode))) {
        (Expect::Fails(want), Err(e)) => {
            assert_eq!(error_event(&e, &seg), want, "open failed differently: {e}");
            return;
        }
        (Expect::Fails(want), Ok(_)) => panic!("open under {mode:?} succeeded, expected {want:?}"),
        (Expect::Opens { .. }, Err(e)) => panic!("open under {mode:?} failed: {e}"),
        (
            Expect::Opens {
                events,
                len,
                next_id,
                torn,
                zero_tail,
                damaged,
                header_rewritten,
            },
            Ok(store),
        ) => {
            let r = &store.recovery_report().queues[0];
            assert_eq!(r.torn_tail.as_ref().map(|t| (t.offset, t.bytes)), torn);
            assert_eq!(r.bytes_truncated, torn.map_or(0, |t| t.1));
            assert_eq!(r.zero_tail_bytes, zero_tail, "zeros after the last frame");
            let found: Vec<(u64, u64)> = r.damaged.iter().map(|d| (d.offset, d.len)).collect();
            assert_eq!(found, damaged);
            assert_eq!(r.header_rewritten.is_some(), header_rewritten);
            let file_len = fs
                .open(&seg, OpenMode::Read)
                .and_then(|f| f.len())
                .expect("segment length");
            assert_eq!(file_len, len, "segment length after recovery");
            (store, events, next_id)
        }
    };
    let q = store.queue(QUEUE).expect("queue");
    assert_eq!(q.next_id(), next_id);
    let read = read_all(&q, &seg, bound);
    check_reads(&q, &events, &read, None, &seg);
    check_group(&q, &events, &seg);
    // A push goes right after the last valid frame and survives a reopen
    // with everything before it.
    let mut with_push = messages(&read);
    // When the ids are used up (the next would be `u64::MAX`) the push is
    // refused and changes nothing (`push_at_id_max_overflows`).
    let payload = b"pushed after recovery".to_vec();
    if next_id < u64::MAX {
        assert_eq!(q.push(&payload).expect("push after recovery"), next_id);
        with_push.push(Event::Message(next_id, NOW_MS, 0, 0, payload));
    } else {
        assert!(
            matches!(q.push(&payload), Err(millpond::Error::IdsExhausted { .. })),
            "a push past the last id must be refused"
        );
        assert_eq!(q.next_id(), next_id);
    }
    drop(q);
    store.close().expect("close");
    let store = Store::open(STORE, options(&fs, RecoveryMode::Skip)).expect("reopen");
    let q = store.queue(QUEUE).expect("queue");
    let again = messages(&read_all(&q, &seg, bound));
    assert_eq!(again, with_push, "reopen lost or changed messages");
    drop(q);
    store.close().expect("close");
}

/// Opens a store with the bytes as a sealed segment and a tail segment
/// after it holding one message; returns everything its reader yielded.
fn check_sealed(data: &[u8], first_id: u64, tail_id: u64, mode: RecoveryMode) -> Vec<Event> {
    let bound = 64 + 2 * data.len();
    let mut tail = segment::encode_header(tail_id).to_vec();
    let after = b"in the tail segment";
    frame::encode(&mut tail, tail_id, NOW_MS, &frame::Attrs::default(), after);
    let tail_event = Event::Message(tail_id, NOW_MS, 0, 0, after.to_vec());
    let fs = plant(&[(first_id, data), (tail_id, &tail)]);
    let seg = seg_path(first_id);
    let store = Store::open(STORE, options(&fs, mode)).expect("sealed segments are not scanned");
    let q = store.queue(QUEUE).expect("queue");
    assert_eq!(q.next_id(), tail_id + 1);
    let read = read_all(&q, &seg, bound);
    let header = segment::decode_header(data, first_id);
    let (mut expected, exact) = match header {
        Ok(()) => {
            let (s, mut events) = walk(data, first_id);
            if let Some((offset, _, _)) = s.torn {
                // Sealed segments were fsynced whole: a bad tail is damage.
                events.push(Event::Damage(offset));
            }
            // Ids from the tail segment's first on belong to the tail.
            if let Some(i) = events.iter().position(|e| e.id() >= Some(tail_id)) {
                events.truncate(i);
            }
            // Frames after a newer-format frame are beyond what this
            // version can vouch for: only the prefix is known.
            let exact = s.newer.is_none();
            if let Some((offset, _)) = s.newer {
                events.push(Event::Damage(offset));
            }
            (events, exact)
        }
        Err(HeaderError::Version(v)) => (vec![Event::Unsupported(v)], true),
        Err(_) => (vec![Event::Damage(0)], true),
    };
    let unknown = (!exact).then(|| {
        let mut valid = frames_anywhere(data);
        valid.insert(tail_event.clone());
        valid
    });
    if exact {
        expected.push(tail_event);
    }
    check_reads(&q, &expected, &read, unknown.as_ref(), &seg);
    if exact {
        check_group(&q, &expected, &seg);
    }
    drop(q);
    store.close().expect("close");
    // Reading wrote an index file for the sealed segment; reading through
    // it must give the same messages.
    let store = Store::open(STORE, options(&fs, mode)).expect("reopen");
    let q = store.queue(QUEUE).expect("queue");
    let again = read_all(&q, &seg, bound);
    assert_eq!(
        messages(&again),
        messages(&read),
        "reopen changed the messages"
    );
    drop(q);
    store.close().expect("close");
    read
}

/// Every frame with a valid CRC at any offset of `bytes`.
fn frames_anywhere(bytes: &[u8]) -> BTreeSet<Event> {
    (0..bytes.len())
        .filter_map(|p| match frame::decode(&bytes[p..], PAYLOAD_LEN_MAX) {
            Decoded::Frame(f) => Some(Event::frame(&f)),
            _ => None,
        })
        .collect()
}

fn messages(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.id().is_some())
        .cloned()
        .collect()
}

/// Everything the reader yields from the start, bounded: each `next()`
/// must make progress.
fn read_all(q: &Queue, seg: &Path, bound: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for item in q.reader(0) {
        out.push(match item {
            Ok(m) => Event::message(m),
            Err(e) => error_event(&e, seg),
        });
        assert!(out.len() <= bound, "the reader does not terminate");
    }
    out
}

/// The reader's output against the expected events: the same messages in
/// the same order (or, with `unknown`, the expected ones first and then
/// only frames that exist in the bytes), ids ascending, and damage reported
/// only where there is damage. Point reads agree.
fn check_reads(
    q: &Queue,
    expected: &[Event],
    read: &[Event],
    unknown: Option<&BTreeSet<Event>>,
    seg: &Path,
) {
    let ids: Vec<u64> = read.iter().filter_map(Event::id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids do not ascend: {ids:?}"
    );
    let want = messages(expected);
    let got = messages(read);
    let want_errors: Vec<&Event> = expected.iter().filter(|e| e.id().is_none()).collect();
    let got_errors: Vec<&Event> = read.iter().filter(|e| e.id().is_none()).collect();
    match unknown {
        None => {
            assert_eq!(got, want, "the reader's messages");
            // Leading damage before a frame the index points at may go
            // unreported by the reader (recovery reports it); none may be
            // invented.
            assert!(
                got_errors.iter().all(|e| want_errors.contains(e)),
                "reported {got_errors:?}, damage is {want_errors:?}"
            );
        }
        Some(valid) => {
            assert!(got.len() >= want.len() && got[..want.len()] == want[..]);
            for m in &got[want.len()..] {
                assert!(valid.contains(m), "the reader made up {m:?}");
            }
        }
    }
    let known: BTreeSet<u64> = got.iter().filter_map(Event::id).collect();
    let mut probes: BTreeSet<u64> = known.iter().flat_map(|&id| [id, id + 1]).collect();
    probes.insert(q.next_id().saturating_sub(1));
    probes.insert(0);
    for id in probes {
        match q.read(id) {
            Ok(Some(m)) => {
                let m = Event::message(m);
                assert!(
                    known.contains(&id),
                    "read({id}) found {m:?}, the reader did not"
                );
                assert!(got.contains(&m), "read({id}) gave {m:?}");
            }
            Ok(None) => assert!(!known.contains(&id), "read({id}) lost a message"),
            Err(e) => {
                let _ = error_event(&e, seg);
                assert!(
                    !known.contains(&id),
                    "read({id}) failed for a valid frame: {e}"
                );
            }
        }
    }
}

/// Reserves everything the default group will deliver now: exactly the
/// messages that are ready (not-before passed), each once, intact, on its
/// first attempt; errors only for damaged bytes.
fn check_group(q: &Queue, expected: &[Event], seg: &Path) {
    let g = q.group("default").expect("group");
    let want: BTreeSet<&Event> = expected
        .iter()
        .filter(|e| matches!(e, Event::Message(_, _, _, nb, _) if *nb <= NOW_MS))
        .collect();
    let damage: Vec<&Event> = expected.iter().filter(|e| e.id().is_none()).collect();
    let mut got = BTreeSet::new();
    let bound = 4 + 2 * expected.len();
    for _ in 0..bound {
        match g.reserve(Duration::from_secs(3600)) {
            Ok(Some(d)) => {
                assert_eq!(d.attempt, 1, "message {} delivered twice", d.id);
                let m = expected
                    .iter()
                    .find(|e| e.id() == Some(d.id))
                    .unwrap_or_else(|| panic!("delivered id {} is not a valid frame", d.id));
                let Event::Message(_, ts, priority, _, payload) = m else {
                    unreachable!()
                };
                assert_eq!(
                    (&d.payload, d.enqueued_ms, d.priority),
                    (payload, *ts, *priority)
                );
                assert!(got.insert(m), "message {} delivered twice", d.id);
            }
            Ok(None) => {
                assert_eq!(got, want, "the group's deliveries");
                return;
            }
            Err(e) => {
                let ev = error_event(&e, seg);
                assert!(
                    damage.contains(&&ev),
                    "reserve reported {ev:?}, damage is {damage:?}"
                );
            }
        }
    }
    panic!("reserve does not come to an end");
}
