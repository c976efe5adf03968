//! A large batch is encoded and written in pieces (256 KiB of frames at a
//! time), not copied whole into write buffers first: pushing 16 MB of
//! payloads in one `push_batch` must not allocate anywhere near another
//! 16 MB. Its own test binary, for the counting allocator below.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use millpond::{Durability, Options, Store};
use millpond_suite::payload;

/// The system allocator, counting the bytes live and their high mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is passed to `System` unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System::alloc`, with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` or `realloc` above with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `System::realloc`, with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_large_batch_is_not_copied_whole_into_write_buffers() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default()
            .durability(durability)
            .compact_interval(None);
        let store = Store::open(dir.path(), options).unwrap();
        let q = store.queue("q").unwrap();
        let batch: Vec<Vec<u8>> = (0..4000).map(|i| payload(i, 4096)).collect();
        PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
        let before = LIVE.load(Ordering::SeqCst);
        assert_eq!(q.push_batch(&batch).unwrap(), 1..4001);
        let extra = PEAK.load(Ordering::SeqCst) - before;
        // Pieces of 256 KiB, the batch's list of frames and its index
        // entries: well under 4 MiB. Copied whole, it was over 16 MB.
        assert!(
            extra < 4 << 20,
            "{durability:?}: pushing 16 MB allocated {extra} bytes at its peak"
        );
        q.flush().unwrap();
        let got: Vec<(u64, Vec<u8>)> = q
            .reader(1)
            .map(|m| m.map(|m| (m.id, m.payload)).unwrap())
            .collect();
        assert_eq!(got.len(), 4000);
        for (i, (id, p)) in got.iter().enumerate() {
            assert_eq!((*id, p), (i as u64 + 1, &batch[i]));
        }
    }
}
