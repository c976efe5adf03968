//! Golden stores (`docs/format.md`, versioning rule 8): small stores
//! written by a build of each file-format generation, kept byte for byte
//! under `tests/golden/`. Every build must open them and find the same
//! messages and group state; the files of the current generation must
//! also be what this build's encoders write for the values they hold.
//!
//! Each store was made with the `millpond` CLI of its build
//! (`tests/golden/README.md`): four messages pushed to queue `jobs`
//! (`alpha`; `bravo` at priority 5; `charlie` delayed 1 h; `delta`), then
//! `alpha` reserved and acked, `delta` reserved with a 1 s lease and left
//! (so its lease is lost), `bravo` reserved and buried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use millpond::group::{checkpoint, journal};
use millpond::log::frame::{self, Decoded};
use millpond::log::{index, segment};
use millpond::{DEFAULT_GROUP, ManualClock, Options, STORE_MAGIC, STORE_VERSION, Store};

/// 2027-01-01 UTC: after every golden store was made and its delays due.
const LATER_MS: u64 = 1_798_761_600_000;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Opens a copy of golden store `name` (the files under `tests/` are
/// never written) with the clock at [`LATER_MS`], and checks what it
/// holds.
fn opens_with_its_messages_and_group_state(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    copy_dir(&golden(name), &path);
    let clock = ManualClock::new(LATER_MS);
    let store = Store::open(
        &path,
        Options::default()
            .clock(Arc::new(clock))
            .compact_interval(None),
    )
    .unwrap();
    let q = store.queue("jobs").unwrap();

    let got: Vec<(u64, u32, bool, Vec<u8>)> = q
        .reader(1)
        .map(|m| {
            let m = m.unwrap();
            (m.id, m.priority, m.not_before_ms > 0, m.payload)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 0, false, b"alpha".to_vec()),
            (2, 5, false, b"bravo".to_vec()),
            (3, 0, true, b"charlie".to_vec()),
            (4, 0, false, b"delta".to_vec()),
        ],
        "{name}: the log"
    );
    let m = q.read(3).unwrap().unwrap();
    assert_eq!(m.not_before_ms - m.timestamp_ms, 3_600_000, "{name}: delay");

    // alpha is acked; charlie's delay is over; delta's lease was lost, so
    // its next delivery is its second; bravo is buried until kicked.
    let g = q.group(DEFAULT_GROUP).unwrap();
    let lease = Duration::from_secs(30);
    let order: Vec<(u64, u32, Vec<u8>)> = std::iter::from_fn(|| g.reserve(lease).unwrap())
        .map(|d| (d.id, d.attempt, d.payload))
        .collect();
    assert_eq!(
        order,
        vec![(3, 1, b"charlie".to_vec()), (4, 2, b"delta".to_vec())],
        "{name}: deliveries"
    );
    assert_eq!(g.kick(10).unwrap(), 1, "{name}: bravo was buried");
    // A kick starts the count of deliveries again.
    let d = g.reserve(lease).unwrap().expect("bravo");
    assert_eq!((d.id, d.attempt, d.priority), (2, 1, 5), "{name}: bravo");
    assert!(
        g.reserve(lease).unwrap().is_none(),
        "{name}: alpha is acked"
    );
}

#[test]
fn store_with_version_1_index_opens() {
    opens_with_its_messages_and_group_state("store-index-v1");
    let idx = std::fs::read(golden(
        "store-index-v1/queues/jobs/00000000000000000001.idx",
    ))
    .unwrap();
    assert_eq!(&idx[8..12], &1u32.to_le_bytes(), "a version 1 index");
    let meta = index::decode(&idx).unwrap();
    assert_eq!((meta.first_id, meta.next_id), (1, 5));
}

#[test]
fn store_with_version_2_index_and_version_1_journal_opens() {
    opens_with_its_messages_and_group_state("store-index-v2");
    let journal = std::fs::read(golden(
        "store-index-v2/queues/jobs/groups/default/journal-00000000000000000016.log",
    ))
    .unwrap();
    assert_eq!(&journal[8..12], &1u32.to_le_bytes(), "a version 1 journal");
}

#[test]
fn store_of_the_current_versions_opens() {
    opens_with_its_messages_and_group_state("store-journal-v2");
}

/// The current generation's files are what this build writes for the
/// values they hold.
#[test]
fn current_files_are_what_this_build_encodes() {
    let root = golden("store-journal-v2");
    let q = root.join("queues/jobs");

    let meta = std::fs::read(root.join("millpond.store")).unwrap();
    assert_eq!(&meta[..8], &STORE_MAGIC);
    assert_eq!(&meta[8..12], &STORE_VERSION.to_le_bytes());

    let seg = std::fs::read(q.join("00000000000000000001.seg")).unwrap();
    assert_eq!(&seg[..32], &segment::encode_header(1));
    let mut again = segment::encode_header(1).to_vec();
    let mut pos = segment::HEADER_LEN as usize;
    let mut entries = Vec::new();
    let mut floor = u32::MAX;
    while pos < seg.len() {
        let Decoded::Frame(f) = frame::decode(&seg[pos..], 1 << 20) else {
            panic!("frame at {pos} does not decode");
        };
        if entries.is_empty() {
            entries.push((f.id, pos as u64));
        }
        floor = floor.min(f.attrs.floor_priority());
        frame::encode(&mut again, f.id, f.timestamp_ms, &f.attrs, f.payload);
        pos += f.len;
    }
    assert_eq!(again, seg, "frames re-encode to the same bytes");

    let idx = std::fs::read(q.join("00000000000000000001.idx")).unwrap();
    let want = index::IndexMeta {
        first_id: 1,
        covered_bytes: seg.len() as u64,
        next_id: 5,
        priority_floor: floor,
    };
    assert_eq!(index::decode(&idx), Ok(want));
    assert_eq!(index::encode(&want, &entries), idx);

    let path = q.join("groups/default/checkpoint");
    let bytes = std::fs::read(&path).unwrap();
    let c = checkpoint::decode(&path, &bytes).unwrap();
    assert_eq!(checkpoint::encode(c.journal_seq, &c.state), bytes);

    let path = q.join(format!(
        "groups/default/{}",
        journal::file_name(c.journal_seq)
    ));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        &bytes[..journal::HEADER_LEN as usize],
        &journal::encode_header(c.journal_seq)
    );
    let replay = journal::read(&path, &bytes, c.journal_seq).unwrap();
    let mut again = journal::encode_header(c.journal_seq).to_vec();
    journal::encode_all(&replay.records().collect::<Vec<_>>(), &mut again);
    assert_eq!(again, bytes, "journal records re-encode to the same bytes");
}
