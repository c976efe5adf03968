//! `millpond verify`: check every file of a store with the engine's codecs,
//! without opening the store: the meta file, every segment header and
//! frame, every index file and its entries, every group checkpoint and
//! journal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use millpond::group::{checkpoint, journal};
use millpond::log::{index, segment};
use millpond::{STORE_MAGIC, STORE_VERSION};
use serde_json::{Value, json};

use crate::args::JsonArg;
use crate::failure::{Error, error};
use crate::integrity::walk::{self, Frames, Item};
use crate::progress::Progress;
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
Takes the store's lock (stop the process that owns the store first), then
reads every file with the engine's decoders. Errors are damage or files this
build cannot read; warnings are the expected traces of a crash that the next
open cleans up (a torn tail, unsynced writes that reached the disk out of
order, a stale journal, a leftover temporary file).

Output: a summary, one line per problem naming the file and byte offset,
and a result line. With --json one object:
  {\"store\": \"./millpond-data\", \"clean\": false, \"errors\": 1, \"warnings\": 0,
   \"segments\": 2, \"frames\": 999, ..., \"problems\": [{\"severity\": \"error\",
   \"file\": \"…/00000000000000000001.seg\", \"offset\": 4128, \"size\": 68,
   \"detail\": \"frame checksum mismatch: …\"}]}
Exits with 0 when there is no error, 1 when there is one.

Examples:
  millpond verify
  millpond verify --json | jq '.problems[] | select(.severity == \"error\")'";

/// Arguments of `millpond verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    json: JsonArg,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Damage, or a file this build cannot read: exit code 1.
    Error,
    /// The trace of a crash the next open cleans up.
    Warning,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub size: Option<u64>,
    pub detail: String,
}

impl Problem {
    fn text(&self) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.offset {
            Some(offset) => format!(
                "{severity}: {} at offset {offset}: {}",
                self.file.display(),
                self.detail
            ),
            None => format!("{severity}: {}: {}", self.file.display(), self.detail),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "severity": match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            "file": self.file.display().to_string(),
            "offset": self.offset,
            "size": self.size,
            "detail": self.detail,
        })
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub queues: u64,
    pub segments: u64,
    pub frames: u64,
    pub indexes: u64,
    pub groups: u64,
    pub checkpoints: u64,
    pub journals: u64,
    pub journal_records: u64,
    pub bytes: u64,
    pub quarantined: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn errors(&self) -> u64 {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> u64 {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> u64 {
        self.problems
            .iter()
            .filter(|p| p.severity == severity)
            .count() as u64
    }

    fn problem(
        &mut self,
        severity: Severity,
        file: &Path,
        offset: Option<u64>,
        size: Option<u64>,
        detail: String,
    ) {
        self.problems.push(Problem {
            severity,
            file: file.to_owned(),
            offset,
            size,
            detail,
        });
    }

    fn error(&mut self, file: &Path, offset: u64, detail: String) {
        self.problem(Severity::Error, file, Some(offset), None, detail);
    }

    fn warning(&mut self, file: &Path, offset: Option<u64>, detail: String) {
        self.problem(Severity::Warning, file, offset, None, detail);
    }

    /// The summary line.
    pub fn summary(&self, store: &Path) -> String {
        format!(
            "checked {} ({}): {}, {}, {}, {}, {} ({}, {}, {}) in {}",
            store.display(),
            output::bytes(self.bytes),
            output::plural(self.queues, "queue"),
            output::plural(self.segments, "segment"),
            output::plural(self.frames, "frame"),
            output::plural(self.indexes, "index file"),
            output::plural(self.groups, "group"),
            output::plural(self.checkpoints, "checkpoint"),
            output::plural(self.journals, "journal"),
            output::plural(self.journal_records, "journal record"),
            output::duration(self.elapsed)
        )
    }

    pub fn to_json(&self, store: &Path) -> Value {
        json!({
            "store": store.display().to_string(),
            "clean": self.errors() == 0,
            "errors": self.errors(),
            "warnings": self.warnings(),
            "queues": self.queues,
            "segments": self.segments,
            "frames": self.frames,
            "indexes": self.indexes,
            "groups": self.groups,
            "checkpoints": self.checkpoints,
            "journals": self.journals,
            "journal_records": self.journal_records,
            "bytes": self.bytes,
            "quarantined_files": self.quarantined,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "problems": self.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Runs `millpond verify`.
///
/// # Errors
///
/// No store; a locked store; I/O errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    open::require_store(&global.store)?;
    let _lock = open::lock(&global.store)?;
    let report = check_store(&global.store)?;
    if args.json.json {
        output::json_document(&report.to_json(&global.store))?;
    } else {
        println!("{}", report.summary(&global.store));
        for problem in &report.problems {
            println!("{}", problem.text());
        }
        if report.quarantined > 0 {
            println!(
                "note: {} from earlier repairs in {}",
                output::plural(report.quarantined, "quarantine file"),
                global.store.join(open::QUARANTINE_DIR).display()
            );
        }
        println!("{}", result_line(&report));
    }
    Ok(if report.errors() == 0 {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}

/// The last line of the text report.
pub fn result_line(report: &Report) -> String {
    match (report.errors(), report.warnings()) {
        (0, 0) => "result: clean".to_owned(),
        (0, w) => format!(
            "result: no damage; {} (cleaned up when the store is next opened, or by `millpond repair`)",
            output::plural(w, "warning")
        ),
        (e, w) => format!(
            "result: {}, {}: `millpond repair` moves the damaged bytes aside into quarantine files",
            output::plural(e, "error"),
            output::plural(w, "warning")
        ),
    }
}

/// Checks every file of the store in `store` (the caller holds its lock).
///
/// # Errors
///
/// I/O errors other than the damage reported.
pub fn check_store(store: &Path) -> Result<Report, Error> {
    let started = Instant::now();
    let mut report = Report::default();
    let queue_names = open::list_names(&store.join(open::QUEUES_DIR))?;
    let total: u64 = queue_names
        .iter()
        .map(|q| dir_bytes(&open::queue_dir(store, q)))
        .sum();
    let progress = Progress::bytes(total, "verify");
    check_meta(&store.join(open::META_FILE), &mut report)?;
    for name in &queue_names {
        report.queues += 1;
        check_queue(&open::queue_dir(store, name), &mut report, &progress)?;
    }
    report.quarantined = count_files(&store.join(open::QUARANTINE_DIR));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Bytes of the files in `dir` and its sub-directories (for progress).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| error(format!("read {}: {e}", path.display())))
}

fn u32_at(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(b[offset..offset + 4].try_into().expect("4 bytes"))
}

/// The store meta file, checked in the engine's order.
fn check_meta(path: &Path, report: &mut Report) -> Result<(), Error> {
    let b = read(path)?;
    if b.len() != 16 || b[..8] != STORE_MAGIC {
        report.error(path, 0, "not a millpond store meta file".into());
        return Ok(());
    }
    let (stored, computed) = (u32_at(&b, 12), crc32fast::hash(&b[..12]));
    if stored != computed {
        report.error(
            path,
            12,
            format!(
                "store meta file checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
        );
        return Ok(());
    }
    let version = u32_at(&b, 8);
    if version > STORE_VERSION {
        report.error(
            path,
            8,
            format!(
                "format version {version}, this build reads up to {STORE_VERSION}: upgrade millpond"
            ),
        );
    }
    Ok(())
}

/// A queue's directory: its segments and indexes, leftovers, its groups.
fn check_queue(dir: &Path, report: &mut Report, progress: &Progress) -> Result<(), Error> {
    let segments = walk::segments(dir)?;
    let mut last_id: Option<u64> = None;
    for (i, seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let bytes = read(&seg.path)?;
        report.segments += 1;
        report.bytes += bytes.len() as u64;
        let index_bytes = if seg.index_path.exists() {
            Some(read(&seg.index_path)?)
        } else {
            None
        };
        let cut = newest
            .then(|| walk::unsynced_cut(&bytes, seg.first_id, index_bytes.as_deref()))
            .flatten();
        let frames = check_segment(seg, &bytes, newest, cut, last_id, report);
        if let Some(&(_, id)) = frames.last() {
            last_id = Some(id);
        }
        progress.inc(bytes.len() as u64);
        if let Some(index_bytes) = index_bytes {
            report.indexes += 1;
            report.bytes += index_bytes.len() as u64;
            check_index(
                seg,
                &index_bytes,
                &frames,
                bytes.len() as u64,
                newest,
                report,
            );
            progress.inc(index_bytes.len() as u64);
        }
    }
    for name in open::list_files(dir)? {
        let path = dir.join(&name);
        if let Some(stem) = name.strip_suffix(".idx")
            && segment::parse_file_name(&format!("{stem}.seg")).is_some()
            && !dir.join(format!("{stem}.seg")).exists()
        {
            report.warning(
                &path,
                None,
                "index file without its segment (left by compaction); the next open removes it"
                    .into(),
            );
        } else if name.ends_with(".idx.tmp") || name.ends_with(".seg.compact") {
            report.warning(
                &path,
                None,
                "leftover of an interrupted write; the next open removes it".into(),
            );
        } else if name.ends_with(".seg.repair") {
            report.warning(
                &path,
                None,
                "leftover of an interrupted `millpond repair`; run it again".into(),
            );
        }
    }
    let groups_dir = dir.join(open::GROUPS_DIR);
    for name in open::list_names(&groups_dir)? {
        report.groups += 1;
        check_group(&groups_dir.join(name), report, progress)?;
    }
    Ok(())
}

/// A segment's header and frames; returns its valid frames as
/// (offset, id), those the next open keeps: up to `cut`, the out-of-order
/// hole of unsynced writes the next open cuts the newest segment at.
fn check_segment(
    seg: &walk::SegmentPaths,
    bytes: &[u8],
    newest: bool,
    cut: Option<walk::Cut>,
    last_id: Option<u64>,
    report: &mut Report,
) -> Vec<(u64, u64)> {
    let path = &seg.path;
    match segment::decode_header(bytes, seg.first_id) {
        Ok(()) => {}
        Err(segment::HeaderError::Short) if newest => {
            report.warning(
                path,
                Some(0),
                format!(
                    "segment of {} bytes, shorter than its header: a crash while creating it; \
                     the next open rewrites the header",
                    bytes.len()
                ),
            );
            return Vec::new();
        }
        Err(segment::HeaderError::Invalid(_)) if newest && bytes.iter().all(|&b| b == 0) => {
            report.warning(
                path,
                Some(0),
                "segment of zeros: a crash while creating it; the next open rewrites the header"
                    .into(),
            );
            return Vec::new();
        }
        Err(e @ (segment::HeaderError::Short | segment::HeaderError::Version(_))) => {
            report.error(path, 0, walk::header_problem(&e));
            return Vec::new();
        }
        Err(e @ segment::HeaderError::Invalid(_)) => {
            report.error(path, 0, walk::header_problem(&e));
        }
    }
    if let Some(last) = last_id
        && seg.first_id <= last
    {
        report.error(
            path,
            16,
            format!(
                "the segment starts at id {}, not above the last id {last} of the segment before it",
                seg.first_id
            ),
        );
    }
    let mut frames = Vec::new();
    let mut previous_id = last_id;
    for item in Frames::new(bytes, seg.first_id) {
        if cut.as_ref().is_some_and(|c| item.offset() >= c.offset) {
            break;
        }
        match item {
            Item::Frame { offset, frame } => {
                report.frames += 1;
                frames.push((offset, frame.id));
                previous_id = Some(frame.id);
            }
            Item::Damage {
                offset,
                len,
                detail,
            } => {
                let next = offset + len;
                report.problem(
                    Severity::Error,
                    path,
                    Some(offset),
                    Some(len),
                    format!(
                        "{detail} ({len} bytes up to the next valid frame at offset {next}{})",
                        lost_ids(previous_id, bytes, next)
                    ),
                );
            }
            Item::Tail {
                offset,
                len,
                detail,
            } if newest => report.problem(
                Severity::Warning,
                path,
                Some(offset),
                Some(len),
                format!(
                    "torn tail of {len} bytes ({detail}): a crash during a write; the next open \
                     truncates it, `millpond repair` moves it aside"
                ),
            ),
            Item::Tail {
                offset,
                len,
                detail,
            } => report.problem(
                Severity::Error,
                path,
                Some(offset),
                Some(len),
                format!("{detail} ({len} bytes up to the end of a sealed segment)"),
            ),
            // Preallocated space ahead of the newest segment's frames.
            Item::Zeros { .. } if newest => {}
            Item::Zeros { offset, len } => report.problem(
                Severity::Error,
                path,
                Some(offset),
                Some(len),
                format!(
                    "{len} zero bytes up to the end of a sealed segment (a sealed segment ends at its last frame)"
                ),
            ),
            Item::Newer { offset, flags } => report.error(
                path,
                offset,
                format!(
                    "frame flags {flags:#x} unknown to this version (written by a newer \
                     millpond): upgrade millpond; the rest of the file is not checked"
                ),
            ),
        }
    }
    if let Some(cut) = cut {
        report.problem(
            Severity::Warning,
            path,
            Some(cut.offset),
            Some(bytes.len() as u64 - cut.offset),
            format!(
                "{}; the next open truncates the segment here, `millpond repair` moves the \
                 rest aside",
                cut.detail()
            ),
        );
    }
    frames
}

/// Which ids a damaged range may have held: those between the valid frames
/// around it (a compacted segment may have had fewer).
fn lost_ids(previous_id: Option<u64>, bytes: &[u8], next_offset: u64) -> String {
    let next_id = millpond::log::frame::peek_id(&bytes[next_offset as usize..]);
    match (previous_id, next_id) {
        (Some(p), Some(n)) if n > p + 1 => format!("; it held ids {}..={}", p + 1, n - 1),
        (None, Some(n)) => format!("; it held ids below {n}"),
        _ => String::new(),
    }
}

/// An index file against its segment's valid frames.
pub fn check_index(
    seg: &walk::SegmentPaths,
    b: &[u8],
    frames: &[(u64, u64)],
    segment_len: u64,
    newest: bool,
    report: &mut Report,
) {
    let path = &seg.index_path;
    let rebuilt = "the engine rebuilds index files; `millpond repair` removes this one";
    let meta = match index::decode(b) {
        Ok(meta) => meta,
        Err(index::IndexError::Invalid(why)) => {
            report.error(path, 0, format!("index file {why} ({rebuilt})"));
            return;
        }
        Err(index::IndexError::Version(v)) => {
            report.error(
                path,
                8,
                format!(
                    "index format version {v}, this build reads up to {}: upgrade millpond",
                    index::VERSION
                ),
            );
            return;
        }
    };
    if meta.first_id != seg.first_id {
        report.error(
            path,
            16,
            format!(
                "index of first id {}, its segment starts at {} ({rebuilt})",
                meta.first_id, seg.first_id
            ),
        );
        return;
    }
    if meta.covered_bytes > segment_len {
        report.error(
            path,
            24,
            format!(
                "index covers {} bytes, its segment has {segment_len} ({rebuilt})",
                meta.covered_bytes
            ),
        );
        return;
    }
    if !newest && meta.covered_bytes != segment_len {
        report.warning(
            path,
            Some(24),
            format!(
                "index covers {} of the {segment_len} bytes of its sealed segment; the engine \
                 rebuilds it on the next read",
                meta.covered_bytes
            ),
        );
    }
    for i in 0..index::entry_count(b) {
        let (id, position) = index::entry(b, i);
        if frames.binary_search(&(position, id)).is_err() {
            report.error(
                path,
                (index::entries_offset(b) + i * index::ENTRY_LEN) as u64,
                format!(
                    "index entry {i} points at id {id} at offset {position} of the segment, \
                     where no valid frame with that id starts ({rebuilt})"
                ),
            );
            return;
        }
    }
    let covered_next = frames
        .iter()
        .take_while(|&&(offset, _)| offset < meta.covered_bytes)
        .last()
        .map_or(seg.first_id, |&(_, id)| id + 1);
    if meta.next_id != covered_next {
        report.error(
            path,
            32,
            format!(
                "index says the next id is {}, the frames it covers end before id {covered_next} ({rebuilt})",
                meta.next_id
            ),
        );
    }
}

/// A group's checkpoint and journals.
fn check_group(dir: &Path, report: &mut Report, progress: &Progress) -> Result<(), Error> {
    let checkpoint_path = dir.join(open::CHECKPOINT_FILE);
    let mut checkpoint_seq = None;
    if checkpoint_path.exists() {
        let b = read(&checkpoint_path)?;
        report.checkpoints += 1;
        report.bytes += b.len() as u64;
        progress.inc(b.len() as u64);
        match checkpoint::decode(&checkpoint_path, &b) {
            Ok(c) => checkpoint_seq = Some(c.journal_seq),
            Err(e) => engine_error(&checkpoint_path, &e, report),
        }
    } else {
        report.warning(
            &checkpoint_path,
            None,
            "missing: a crash while creating the group; the next open starts it from its journals"
                .into(),
        );
    }
    let mut seqs: Vec<u64> = open::list_files(dir)?
        .iter()
        .filter_map(|n| journal::parse_file_name(n))
        .collect();
    seqs.sort_unstable();
    for &seq in &seqs {
        let path = dir.join(journal::file_name(seq));
        let b = read(&path)?;
        report.journals += 1;
        report.bytes += b.len() as u64;
        progress.inc(b.len() as u64);
        if checkpoint_seq.is_some_and(|c| seq < c) {
            report.warning(
                &path,
                None,
                "journal older than the checkpoint (a crash between a checkpoint and the \
                 journal's removal); the next open removes it"
                    .into(),
            );
            continue;
        }
        check_journal(&path, &b, seq, report);
    }
    if let Some(c) = checkpoint_seq
        && !seqs.contains(&c)
    {
        report.warning(
            &dir.join(journal::file_name(c)),
            None,
            "missing journal named by the checkpoint; the next open creates a new one".into(),
        );
    }
    Ok(())
}

/// A journal: its header, records, and whether valid records follow a bad
/// one (the engine stops reading at the first bad record).
fn check_journal(path: &Path, b: &[u8], seq: u64, report: &mut Report) {
    let replay = match journal::read(path, b, seq) {
        Ok(replay) => replay,
        Err(e) => return engine_error(path, &e, report),
    };
    report.journal_records += replay.record_count();
    if replay.torn_bytes == 0 {
        return;
    }
    if replay.end == 0 {
        report.warning(
            path,
            Some(0),
            "journal header incomplete: a crash while creating it; the engine ignores it".into(),
        );
        return;
    }
    let end = replay.end as usize;
    let valid_after = (end + journal::RECORD_LEN..b.len())
        .step_by(journal::RECORD_LEN)
        .find(|&p| {
            p + journal::RECORD_LEN <= b.len()
                && journal::decode_slot(&b[p..p + journal::RECORD_LEN]).is_some()
        });
    match valid_after {
        Some(p) => report.problem(
            Severity::Error,
            path,
            Some(end as u64),
            Some((p - end) as u64),
            format!(
                "journal record fails its check, and valid records follow at offset {p}: the \
                 engine stops reading at the damage, so they would be lost; `millpond repair` \
                 moves the damaged record aside"
            ),
        ),
        None => report.problem(
            Severity::Warning,
            path,
            Some(end as u64),
            Some(replay.torn_bytes),
            format!(
                "torn tail of {} bytes: a crash during a write; the engine ignores it",
                replay.torn_bytes
            ),
        ),
    }
}

/// Reports an engine decoding error with its file and offset.
fn engine_error(path: &Path, e: &millpond::Error, report: &mut Report) {
    match e {
        millpond::Error::Corruption { offset, detail, .. } => {
            report.error(path, *offset, detail.clone());
        }
        other => report.error(path, 0, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_ids_are_the_gap_between_valid_frames() {
        let mut b = vec![0u8; 28];
        b[8..16].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(lost_ids(Some(6), &b, 0), "; it held ids 7..=8");
        assert_eq!(lost_ids(Some(8), &b, 0), "");
        assert_eq!(lost_ids(None, &b, 0), "; it held ids below 9");
    }
}
