//! What an import has done, kept in the store it imports into, so that
//! running the same import again after a crash finishes it instead of
//! pushing its first messages twice, and running it after it finished
//! pushes nothing.
//!
//! `<store>/imports/<exported at>-<file checksum>.json`, replaced
//! atomically (written to `.tmp`, fsynced, renamed, directory fsynced)
//! before the first batch and every `RECORD_EVERY`th one after it. It
//! names the file record that batch starts at and the id the queue gives
//! next: after a crash, the messages the queue holds from that id on that
//! match the file's records from there, payload and priority, are the ones
//! that got in since; the import goes on after them.

use std::path::{Path, PathBuf};

use millpond::fs::{RealFs, create_dir_durable, write_atomic};
use serde::{Deserialize, Serialize};

use crate::failure::{Error, error};

/// The store's directory of import records.
pub const IMPORTS_DIR: &str = "imports";

/// Version of the record's layout.
const VERSION: u32 = 1;

/// An import's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The export file as it was named (for people reading the record).
    pub file: String,
    /// The queue it goes into.
    pub queue: String,
    pub include_buried: bool,
    /// File records taken (pushed or skipped as buried) before the batch
    /// the record was written for, and the id that batch's first message
    /// gets.
    pub records_done: u64,
    pub next_id: u64,
    pub imported: u64,
    pub delayed: u64,
    pub skipped_buried: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// Every record was taken and the queue flushed.
    pub complete: bool,
}

impl State {
    pub fn new(file: &Path, queue: &str, include_buried: bool) -> State {
        State {
            version: VERSION,
            file: file.display().to_string(),
            queue: queue.to_owned(),
            include_buried,
            records_done: 0,
            next_id: 0,
            imported: 0,
            delayed: 0,
            skipped_buried: 0,
            first_id: None,
            last_id: None,
            complete: false,
        }
    }
}

/// The record of one export file (by when it was exported and the
/// checksum of its whole contents) in one store.
pub fn path(store: &Path, exported_ms: u64, checksum: u32) -> PathBuf {
    store
        .join(IMPORTS_DIR)
        .join(format!("{exported_ms}-{checksum:08x}.json"))
}

/// Reads a record; `None` if there is none.
///
/// # Errors
///
/// A record that cannot be read or parsed: it is named, with what to do.
pub fn load(path: &Path) -> Result<Option<State>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(format!("read {}: {e}", path.display()))),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| {
        error(format!(
            "{} is not a readable import record ({e}); remove it to import from the \
             start, which pushes again whatever the interrupted import pushed",
            path.display()
        ))
    })?;
    if state.version > VERSION {
        return Err(error(format!(
            "{} was written by a newer millpond (record version {}, this build reads {VERSION})",
            path.display(),
            state.version
        )));
    }
    Ok(Some(state))
}

/// Replaces the record, durably.
///
/// # Errors
///
/// I/O errors, naming the file.
pub fn save(path: &Path, state: &State) -> Result<(), Error> {
    let dir = path
        .parent()
        .expect("a record is inside the imports directory");
    create_dir_durable(&RealFs, dir)
        .map_err(|e| error(format!("create {}: {e}", dir.display())))?;
    let mut bytes = serde_json::to_vec_pretty(state).expect("a record serializes");
    bytes.push(b'\n');
    write_atomic(&RealFs, path, &bytes).map_err(|e| error(format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::{State, load, path, save};

    #[test]
    fn a_saved_record_loads_back_and_replaces_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), 1_700_000_000_000, 0xdead_beef);
        assert!(p.ends_with("imports/1700000000000-deadbeef.json"));
        assert_eq!(load(&p).expect("no record"), None);
        let mut s = State::new(std::path::Path::new("jobs.mpx"), "jobs", false);
        save(&p, &s).expect("save");
        s.records_done = 1000;
        s.next_id = 1007;
        s.first_id = Some(7);
        save(&p, &s).expect("save again");
        assert_eq!(load(&p).expect("load"), Some(s));
        assert!(!p.with_extension("json.tmp").exists());
    }

    #[test]
    fn an_unreadable_record_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), 1, 2);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"{\"version\": 1, \"fi").expect("write");
        let e = load(&p).expect_err("truncated JSON").to_string();
        assert!(e.contains("1-00000002.json"), "{e}");
        assert!(e.contains("remove it to import from the start"), "{e}");
    }
}
