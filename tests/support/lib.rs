//! Shared helpers for the integration tests and benches.

use std::path::PathBuf;
use std::sync::Arc;

use millpond::Options;
use millpond::fs::MemFs;

pub mod fuzz_targets;
pub mod hook_fs;

/// A place to open a store: a directory and options naming its file system.
pub struct Place {
    /// The store directory.
    pub path: PathBuf,
    /// Options with the file system set.
    pub options: Options,
    _dir: Option<tempfile::TempDir>,
}

/// Which file system a test body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// The operating system's, in a temporary directory.
    Real,
    /// The in-memory one.
    Mem,
}

impl Place {
    /// A fresh, empty place on the given file system.
    pub fn new(kind: FsKind) -> Place {
        match kind {
            FsKind::Real => {
                let dir = tempfile::tempdir().expect("tempdir");
                Place {
                    path: dir.path().join("store"),
                    options: Options::default(),
                    _dir: Some(dir),
                }
            }
            FsKind::Mem => Place {
                path: PathBuf::from("/mem/store"),
                options: Options::default().fs(Arc::new(MemFs::new())),
                _dir: None,
            },
        }
    }
}

/// Runs `body` once on the real and once on the in-memory file system.
pub fn on_each_fs(body: impl Fn(Place)) {
    for kind in [FsKind::Real, FsKind::Mem] {
        body(Place::new(kind));
    }
}

/// A payload whose bytes are derived from `i`, of length `len`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The names of the group journal files in `dir`, in order.
pub fn journal_files(fs: &dyn millpond::fs::Fs, dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list_dir(dir)
        .expect("list group directory")
        .into_iter()
        .filter(|n| millpond::group::journal::parse_file_name(n).is_some())
        .collect();
    names.sort();
    names
}
