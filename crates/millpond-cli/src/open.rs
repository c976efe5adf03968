//! Opening the store for a command: the options every command uses, the
//! checks that turn a typo into a clear error rather than a new, empty
//! store, queue or group, and the store lock for commands that read the
//! files directly.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use millpond::{Durability, Group, Options, Queue, Store};

use crate::failure::{Error, error};

/// The store meta file (see docs/format.md).
pub const META_FILE: &str = "millpond.store";
/// The lock file.
pub const LOCK_FILE: &str = "LOCK";
/// The directory of queues.
pub const QUEUES_DIR: &str = "queues";
/// A queue's directory of groups.
pub const GROUPS_DIR: &str = "groups";
/// A group's checkpoint file.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Where `repair` moves damaged bytes.
pub const QUARANTINE_DIR: &str = "quarantine";

/// The options of a command's store: `durability`, and no background
/// compactor (a command does its work and closes; `compact` compacts).
pub fn options(durability: Durability) -> Options {
    Options::default()
        .durability(durability)
        .compact_interval(None)
}

/// Fails unless `path` holds a store.
///
/// # Errors
///
/// A message saying what is missing and what to do.
pub fn require_store(path: &Path) -> Result<(), Error> {
    if !path.is_dir() {
        return Err(error(format!(
            "no store at {}: the directory does not exist; pass --store DIR, \
             or create a store with `millpond push`",
            path.display()
        )));
    }
    if !path.join(META_FILE).exists() {
        return Err(error(format!(
            "{} is not a millpond store (it has no {META_FILE} file); pass --store DIR",
            path.display()
        )));
    }
    Ok(())
}

/// Opens the store in `path`, which must exist.
///
/// # Errors
///
/// No store there; the engine's errors ([`millpond::Error::Locked`] when
/// another process holds it).
pub fn existing(path: &Path, durability: Durability) -> Result<Store, Error> {
    require_store(path)?;
    open(path, durability)
}

/// Opens the store in `path`, creating it if needed.
///
/// # Errors
///
/// The engine's errors.
pub fn open(path: &Path, durability: Durability) -> Result<Store, Error> {
    let store = Store::open(path, options(durability))?;
    log_recovery(&store);
    Ok(store)
}

/// Closes `store` at the end of a command, whatever `result` the command's
/// work had, and returns that result. Handles to its queues and groups
/// must be dropped by then (they fail with [`millpond::Error::Closed`]
/// afterwards).
///
/// A clean close fsyncs what the command wrote and writes every group's
/// checkpoint with its unexpired leases, so a message this command
/// reserved is still reserved for the next one (`millpond ack`).
///
/// # Errors
///
/// `result`'s error; else the close's. When both fail, the close's error
/// is logged and `result`'s returned.
pub fn close_after<T>(store: Store, result: Result<T, Error>) -> Result<T, Error> {
    let closed = store.close();
    match (result, closed) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(close)) => {
            tracing::warn!("closing the store after the error failed too: {close}");
            Err(e)
        }
    }
}

/// Logs what opening the store found: a summary at `info`, repairs at
/// `warn`.
fn log_recovery(store: &Store) {
    let report = store.recovery_report();
    tracing::info!(
        store = %store.path().display(),
        queues = report.queues.len(),
        segments_scanned = report.segments_scanned(),
        elapsed_ms = report.duration.as_millis() as u64,
        "opened store"
    );
    for queue in &report.queues {
        if let Some(torn) = &queue.torn_tail {
            tracing::warn!(
                "queue {}: truncated a torn tail of {} bytes in {} at offset {} ({})",
                queue.queue,
                torn.bytes,
                torn.path.display(),
                torn.offset,
                torn.detail
            );
        }
        for damaged in &queue.damaged {
            tracing::warn!(
                "queue {}: damaged range of {} bytes in {} at offset {} ({})",
                queue.queue,
                damaged.len,
                damaged.path.display(),
                damaged.offset,
                damaged.detail
            );
        }
    }
}

/// The queue `name`, which must exist.
///
/// # Errors
///
/// A message listing the queues there are.
pub fn queue(store: &Store, name: &str) -> Result<Queue, Error> {
    let names = store.queue_names();
    if !names.iter().any(|n| n == name) {
        let known = if names.is_empty() {
            "the store has no queues yet; `millpond push --queue NAME` creates one".to_owned()
        } else {
            format!("queues: {}", names.join(", "))
        };
        return Err(error(format!(
            "no queue {name:?} in {}: {known}",
            store.path().display()
        )));
    }
    Ok(store.queue(name)?)
}

/// The group `name` of `queue`, which must exist.
///
/// # Errors
///
/// A message listing the groups there are.
pub fn group(queue: &Queue, name: &str) -> Result<Group, Error> {
    let names = queue.group_names();
    if !names.iter().any(|n| n == name) {
        return Err(error(format!(
            "no group {name:?} in queue {:?}: groups: {} (`millpond reserve --group {name}` creates it)",
            queue.name(),
            names.join(", ")
        )));
    }
    Ok(queue.group(name)?)
}

/// The directory of queue `name`.
pub fn queue_dir(store: &Path, name: &str) -> PathBuf {
    store.join(QUEUES_DIR).join(name)
}

/// Takes the store's lock for a command that reads or writes its files
/// directly; the lock is held until the returned file is dropped.
///
/// # Errors
///
/// [`millpond::Error::Locked`] when another process holds the store; I/O
/// errors.
pub fn lock(store: &Path) -> Result<File, Error> {
    let path = store.join(LOCK_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| error(format!("open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Box::new(millpond::Error::Locked { path })),
        Err(TryLockError::Error(e)) => Err(error(format!("lock {}: {e}", path.display()))),
    }
}

/// Names of the sub-directories of `dir` that are valid queue or group
/// names, sorted; none if `dir` is missing.
///
/// # Errors
///
/// I/O errors other than a missing directory.
pub fn list_names(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(format!("list {}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(format!("list {}: {e}", dir.display())))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && millpond::validate_name(name).is_ok()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Names of the files in `dir`, sorted.
///
/// # Errors
///
/// I/O errors.
pub fn list_files(dir: &Path) -> Result<Vec<String>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| error(format!("list {}: {e}", dir.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(format!("list {}: {e}", dir.display())))?;
        if entry.file_type().is_ok_and(|t| t.is_file())
            && let Some(name) = entry.file_name().to_str()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}
