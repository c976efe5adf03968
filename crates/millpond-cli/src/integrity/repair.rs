//! `millpond repair`: move damaged byte ranges aside into quarantine files
//! and rewrite the files without them; never drop a byte silently.
//!
//! Order of each fix, so a crash at any point loses nothing: (1) the
//! damaged bytes are written to a quarantine file, fsynced, and its
//! directory fsynced; (2) the repaired file is written next to the old one
//! (`<file>.repair`), fsynced, renamed over it, and the directory fsynced;
//! (3) derived files that described the old layout (the segment's index)
//! are removed. A crash before (2) leaves the damaged file as it was and a
//! quarantine copy that the next repair writes again.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use millpond::group::{checkpoint, journal};
use millpond::log::segment;
use millpond::{STORE_MAGIC, STORE_VERSION};
use serde_json::{Value, json};

use crate::args::JsonArg;
use crate::failure::{Error, error};
use crate::integrity::verify::{self, Severity};
use crate::integrity::walk::{self, Frames, Item};
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
Takes the store's lock, then for every problem `millpond verify` reports:
  - damaged ranges of a segment (interior damage, a bad tail, a torn tail):
    the bytes are copied into a quarantine file, then the segment is
    rewritten without them, every valid frame kept with its id; its index
    is removed (the engine rebuilds it);
  - a hole of unsynced writes that reached the disk out of order in the
    newest segment: it and everything after it are quarantined, the frames
    after it included (none was ever made durable; the next open would cut
    them the same way);
  - a damaged segment header: the old header is quarantined and a new one
    written (the first id comes from the file name);
  - a damaged index file: removed (derived data, rebuilt);
  - damaged group journal records: quarantined, the journal rewritten with
    the valid records (a lost ack means a message may be delivered again);
  - a damaged group checkpoint or journal header: the file is moved into
    quarantine (the group then replays what is left: messages it finished
    may be delivered again, none is lost);
  - a damaged store meta file: quarantined and written again;
  - leftovers of interrupted writes: removed.
Quarantine files go under <store>/quarantine/, at the path of the file they
come from, named <file>.quarantine-<offset>: the exact damaged bytes.

Output: one line per action, then the result of verifying again; with
--json one object {\"actions\": [{\"action\": \"quarantine\", \"file\": …,
\"offset\": 4128, \"size\": 68, \"quarantine\": …, \"detail\": …}, …],
\"quarantined_bytes\": 68, \"verify\": {…}}. Exits with 0 when the store
verifies clean afterwards, 1 when damage remains.

Examples:
  millpond verify || millpond repair --dry-run
  millpond repair && millpond verify";

/// Arguments of `millpond repair`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,

    #[command(flatten)]
    json: JsonArg,
}

/// One thing repair did (or would do).
#[derive(Debug, Clone)]
struct Action {
    action: &'static str,
    file: PathBuf,
    offset: Option<u64>,
    size: Option<u64>,
    quarantine: Option<PathBuf>,
    detail: String,
}

impl Action {
    /// The verb in the past tense, or after "would" in a dry run.
    fn verb(&self, dry_run: bool) -> String {
        if dry_run {
            return format!("would {}", self.action);
        }
        match self.action {
            "quarantine" => "quarantined",
            "rewrite" => "rewrote",
            "remove" => "removed",
            "move" => "moved",
            other => other,
        }
        .to_owned()
    }

    fn text(&self, dry_run: bool) -> String {
        let at = self
            .offset
            .map(|o| format!(" at offset {o}"))
            .unwrap_or_default();
        let size = self
            .size
            .map(|s| format!(" {s} bytes of"))
            .unwrap_or_default();
        match &self.quarantine {
            Some(q) => format!(
                "{}{size} {}{at} into {}: {}",
                self.verb(dry_run),
                self.file.display(),
                q.display(),
                self.detail
            ),
            None => format!(
                "{} {}{at}: {}",
                self.action,
                self.file.display(),
                self.detail
            ),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "action": self.action,
            "file": self.file.display().to_string(),
            "offset": self.offset,
            "size": self.size,
            "quarantine": self.quarantine.as_ref().map(|q| q.display().to_string()),
            "detail": self.detail,
        })
    }
}

/// The state of one repair run.
#[derive(Debug)]
struct Repair<'a> {
    store: &'a Path,
    dry_run: bool,
    actions: Vec<Action>,
    quarantined_bytes: u64,
}

/// Runs `millpond repair`.
///
/// # Errors
///
/// No store; a locked store; I/O errors (the report then lists what was
/// done before).
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    open::require_store(&global.store)?;
    let _lock = open::lock(&global.store)?;
    let before = verify::check_store(&global.store)?;
    let mut repair = Repair {
        store: &global.store,
        dry_run: args.dry_run,
        actions: Vec::new(),
        quarantined_bytes: 0,
    };
    if !before.problems.is_empty() {
        let result = repair.store_files();
        if let Err(e) = result {
            for action in &repair.actions {
                eprintln!("done before the error: {}", action.text(args.dry_run));
            }
            return Err(e);
        }
    }
    let after = if args.dry_run {
        before
    } else {
        verify::check_store(&global.store)?
    };
    if args.json.json {
        output::json_document(&json!({
            "store": global.store.display().to_string(),
            "dry_run": args.dry_run,
            "actions": repair.actions.iter().map(Action::to_json).collect::<Vec<_>>(),
            "quarantined_bytes": repair.quarantined_bytes,
            "verify": after.to_json(&global.store),
        }))?;
    } else if repair.actions.is_empty() {
        println!("nothing to repair: {}", verify::result_line(&after));
    } else {
        for action in &repair.actions {
            println!("{}", action.text(args.dry_run));
        }
        println!(
            "{}{} ({} quarantined)",
            if args.dry_run {
                "would repair with "
            } else {
                "repaired with "
            },
            output::plural(repair.actions.len() as u64, "action"),
            output::bytes(repair.quarantined_bytes)
        );
        if args.dry_run {
            println!("dry run: nothing was changed");
        } else {
            for problem in after
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
            {
                println!(
                    "still damaged: {} at offset {}: {}",
                    problem.file.display(),
                    problem.offset.unwrap_or(0),
                    problem.detail
                );
            }
            println!("verify after repair: {}", verify::result_line(&after));
        }
    }
    Ok(if after.errors() == 0 || args.dry_run {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| error(format!("read {}: {e}", path.display())))
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> Error {
    error(format!("{what} {}: {e}", path.display()))
}

/// Fsyncs a directory, so a new, renamed or removed entry in it is durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, &e))
}

impl Repair<'_> {
    fn act(&mut self, action: Action) {
        tracing::info!("{}", action.text(self.dry_run));
        self.actions.push(action);
    }

    /// Every file, in the order the engine depends on them.
    fn store_files(&mut self) -> Result<(), Error> {
        self.meta()?;
        for name in open::list_names(&self.store.join(open::QUEUES_DIR))? {
            let dir = open::queue_dir(self.store, &name);
            self.queue(&dir)?;
        }
        Ok(())
    }

    /// Writes `bytes` (damaged bytes of `file` at `offset`) into a
    /// quarantine file and returns its path.
    fn quarantine(&mut self, file: &Path, offset: u64, bytes: &[u8]) -> Result<PathBuf, Error> {
        let relative = file.strip_prefix(self.store).unwrap_or(file);
        let dir = self
            .store
            .join(open::QUARANTINE_DIR)
            .join(relative.parent().unwrap_or(Path::new("")));
        let name = relative
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
        let base = dir.join(format!("{name}.quarantine-{offset}"));
        self.quarantined_bytes += bytes.len() as u64;
        if self.dry_run {
            return Ok(base);
        }
        // The same bytes quarantined by an earlier, interrupted run are
        // kept; different bytes at the same offset get a new name.
        let mut path = base.clone();
        for n in 1.. {
            match fs::read(&path) {
                Ok(existing) if existing == bytes => return Ok(path),
                Ok(_) => path = PathBuf::from(format!("{}.{n}", base.display())),
                Err(_) => break,
            }
        }
        let created = !dir.exists();
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, &e))?;
        let mut f = File::create(&path).map_err(|e| io_err("create", &path, &e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("write", &path, &e))?;
        sync_dir(&dir)?;
        if created {
            // Make the new directories durable, up to the store.
            let mut d = dir.as_path();
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if parent == self.store {
                    break;
                }
                d = parent;
            }
        }
        Ok(path)
    }

    /// Moves a whole file into quarantine.
    fn quarantine_file(&mut self, file: &Path, detail: String) -> Result<(), Error> {
        let bytes = read(file)?;
        let q = self.quarantine(file, 0, &bytes)?;
        self.act(Action {
            action: "move",
            file: file.to_owned(),
            offset: None,
            size: Some(bytes.len() as u64),
            quarantine: Some(q),
            detail,
        });
        self.remove(file)
    }

    /// Replaces `file` with `bytes` durably.
    fn replace(&self, file: &Path, bytes: &[u8]) -> Result<(), Error> {
        if self.dry_run {
            return Ok(());
        }
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tmp = file.with_file_name(format!("{name}.repair"));
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, &e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("write", &tmp, &e))?;
        fs::rename(&tmp, file).map_err(|e| io_err("rename over", file, &e))?;
        sync_dir(file.parent().unwrap_or(Path::new(".")))
    }

    fn remove(&self, file: &Path) -> Result<(), Error> {
        if self.dry_run {
            return Ok(());
        }
        fs::remove_file(file).map_err(|e| io_err("remove", file, &e))?;
        sync_dir(file.parent().unwrap_or(Path::new(".")))
    }

    fn remove_derived(&mut self, file: &Path, detail: &str) -> Result<(), Error> {
        self.act(Action {
            action: "remove",
            file: file.to_owned(),
            offset: None,
            size: None,
            quarantine: None,
            detail: detail.to_owned(),
        });
        self.remove(file)
    }

    fn meta(&mut self) -> Result<(), Error> {
        let path = self.store.join(open::META_FILE);
        let b = read(&path)?;
        let crc_ok = b.len() == 16 && crc32fast::hash(&b[..12]).to_le_bytes() == b[12..16];
        if b.len() == 16 && b[..8] == STORE_MAGIC && crc_ok {
            return Ok(()); // Valid (a newer version is left alone).
        }
        let q = self.quarantine(&path, 0, &b)?;
        self.act(Action {
            action: "quarantine",
            file: path.clone(),
            offset: Some(0),
            size: Some(b.len() as u64),
            quarantine: Some(q),
            detail: "damaged store meta file, written again".into(),
        });
        let mut meta = [0u8; 16];
        meta[..8].copy_from_slice(&STORE_MAGIC);
        meta[8..12].copy_from_slice(&STORE_VERSION.to_le_bytes());
        let crc = crc32fast::hash(&meta[..12]);
        meta[12..].copy_from_slice(&crc.to_le_bytes());
        self.replace(&path, &meta)
    }

    fn queue(&mut self, dir: &Path) -> Result<(), Error> {
        let segments = walk::segments(dir)?;
        for (i, seg) in segments.iter().enumerate() {
            self.segment(seg, i + 1 == segments.len())?;
        }
        // Leftovers of interrupted writes.
        for name in open::list_files(dir)? {
            let path = dir.join(&name);
            if name.ends_with(".idx.tmp")
                || name.ends_with(".seg.compact")
                || name.ends_with(".seg.repair")
            {
                self.remove_derived(&path, "leftover of an interrupted write")?;
            } else if let Some(stem) = name.strip_suffix(".idx")
                && !dir.join(format!("{stem}.seg")).exists()
            {
                self.remove_derived(&path, "index file without its segment")?;
            }
        }
        let groups_dir = dir.join(open::GROUPS_DIR);
        for name in open::list_names(&groups_dir)? {
            self.group(&groups_dir.join(name))?;
        }
        Ok(())
    }

    fn segment(&mut self, seg: &walk::SegmentPaths, newest: bool) -> Result<(), Error> {
        let bytes = read(&seg.path)?;
        let mut header_bad = None;
        match segment::decode_header(&bytes, seg.first_id) {
            Ok(()) => {}
            Err(segment::HeaderError::Version(_)) => return Ok(()),
            // A crash while creating the newest segment: the engine
            // rewrites its header on open; it holds no message.
            Err(segment::HeaderError::Short) if newest => return Ok(()),
            Err(segment::HeaderError::Invalid(_)) if newest && bytes.iter().all(|&b| b == 0) => {
                return Ok(());
            }
            Err(segment::HeaderError::Short) => {
                self.quarantine_file(
                    &seg.path,
                    "sealed segment shorter than its header (it holds no frame)".into(),
                )?;
                if seg.index_path.exists() {
                    self.remove_derived(&seg.index_path, "index of a removed segment")?;
                }
                return Ok(());
            }
            Err(e @ segment::HeaderError::Invalid(_)) => {
                header_bad = Some(walk::header_problem(&e));
            }
        }
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut frames: Vec<(u64, u64)> = Vec::new();
        let mut bad: Vec<(u64, u64, String)> = Vec::new();
        // An out-of-order hole of unsynced writes in the newest segment:
        // the next open cuts there, so everything from it goes aside, as a
        // torn tail does, frames after it included.
        let index_bytes = if seg.index_path.exists() {
            Some(read(&seg.index_path)?)
        } else {
            None
        };
        let cut = newest
            .then(|| walk::unsynced_cut(&bytes, seg.first_id, index_bytes.as_deref()))
            .flatten();
        for item in Frames::new(&bytes, seg.first_id) {
            if cut.as_ref().is_some_and(|c| item.offset() >= c.offset) {
                break;
            }
            match item {
                Item::Frame { offset, frame } => {
                    kept.push((offset as usize, frame.len));
                    frames.push((offset, frame.id));
                }
                Item::Damage {
                    offset,
                    len,
                    detail,
                }
                | Item::Tail {
                    offset,
                    len,
                    detail,
                } => bad.push((offset, len, detail)),
                // Preallocated space: the engine writes over it.
                Item::Zeros { .. } if newest => {}
                Item::Zeros { offset, len } => bad.push((
                    offset,
                    len,
                    "zero bytes up to the end of a sealed segment".into(),
                )),
                // Written by a newer millpond: not ours to rewrite.
                Item::Newer { .. } => return Ok(()),
            }
        }
        if let Some(cut) = &cut {
            bad.push((cut.offset, bytes.len() as u64 - cut.offset, cut.detail()));
        }
        if header_bad.is_none() && bad.is_empty() {
            // The segment is sound; its index must describe it.
            if let Some(index_bytes) = index_bytes {
                let mut check = verify::Report::default();
                verify::check_index(
                    seg,
                    &index_bytes,
                    &frames,
                    bytes.len() as u64,
                    newest,
                    &mut check,
                );
                if let Some(problem) = check.problems.first() {
                    let detail = format!("{} (the engine rebuilds it)", problem.detail);
                    self.remove_derived(&seg.index_path, &detail)?;
                }
            }
            return Ok(());
        }
        if let Some(detail) = header_bad {
            let header = &bytes[..segment::HEADER_LEN as usize];
            let q = self.quarantine(&seg.path, 0, header)?;
            self.act(Action {
                action: "quarantine",
                file: seg.path.clone(),
                offset: Some(0),
                size: Some(segment::HEADER_LEN),
                quarantine: Some(q),
                detail: format!("segment header: {detail}"),
            });
        }
        for (offset, len, detail) in bad {
            let range = &bytes[offset as usize..(offset + len) as usize];
            let q = self.quarantine(&seg.path, offset, range)?;
            self.act(Action {
                action: "quarantine",
                file: seg.path.clone(),
                offset: Some(offset),
                size: Some(len),
                quarantine: Some(q),
                detail,
            });
        }
        let mut repaired = segment::encode_header(seg.first_id).to_vec();
        for &(offset, len) in &kept {
            repaired.extend_from_slice(&bytes[offset..offset + len]);
        }
        self.replace(&seg.path, &repaired)?;
        self.act(Action {
            action: "rewrite",
            file: seg.path.clone(),
            offset: None,
            size: None,
            quarantine: None,
            detail: format!(
                "without the quarantined bytes: {} kept, {} → {}",
                output::plural(kept.len() as u64, "valid frame"),
                output::bytes(bytes.len() as u64),
                output::bytes(repaired.len() as u64)
            ),
        });
        if seg.index_path.exists() {
            self.remove_derived(
                &seg.index_path,
                "index of the segment's old layout (the engine rebuilds it)",
            )?;
        }
        Ok(())
    }

    fn group(&mut self, dir: &Path) -> Result<(), Error> {
        let checkpoint_path = dir.join(open::CHECKPOINT_FILE);
        let mut checkpoint_seq = None;
        if checkpoint_path.exists() {
            let b = read(&checkpoint_path)?;
            match checkpoint::decode(&checkpoint_path, &b) {
                Ok(c) => checkpoint_seq = Some(c.journal_seq),
                Err(millpond::Error::UnsupportedVersion { .. }) => return Ok(()),
                Err(e) => self.quarantine_file(
                    &checkpoint_path,
                    format!(
                        "damaged checkpoint ({e}); the group replays its journals from the \
                         oldest message: messages it had finished may be delivered again"
                    ),
                )?,
            }
        }
        let mut seqs: Vec<u64> = open::list_files(dir)?
            .iter()
            .filter_map(|n| journal::parse_file_name(n))
            .collect();
        seqs.sort_unstable();
        for seq in seqs {
            let path = dir.join(journal::file_name(seq));
            if checkpoint_seq.is_some_and(|c| seq < c) {
                self.remove_derived(
                    &path,
                    "journal older than the checkpoint, which holds its effect",
                )?;
                continue;
            }
            self.journal(&path, seq)?;
        }
        Ok(())
    }

    fn journal(&mut self, path: &Path, seq: u64) -> Result<(), Error> {
        let b = read(path)?;
        match journal::read(path, &b, seq) {
            Ok(replay) if replay.torn_bytes == 0 => return Ok(()),
            Ok(replay) if replay.end == 0 => {
                // A header never written: nothing in it.
                return self.quarantine_file(path, "journal without a complete header".into());
            }
            Ok(_) => {}
            Err(millpond::Error::UnsupportedVersion { .. }) => return Ok(()),
            Err(e) => {
                return self.quarantine_file(
                    path,
                    format!(
                        "damaged journal ({e}); its records are lost: messages they settled \
                         may be delivered again"
                    ),
                );
            }
        }
        // Keep every valid record; quarantine each run of bad bytes.
        let header_len = journal::HEADER_LEN as usize;
        let mut kept = b[..header_len].to_vec();
        let mut bad_start: Option<usize> = None;
        let mut bad: Vec<(usize, usize)> = Vec::new();
        let mut pos = header_len;
        while pos < b.len() {
            let end = (pos + journal::RECORD_LEN).min(b.len());
            let valid =
                end - pos == journal::RECORD_LEN && journal::decode_slot(&b[pos..end]).is_some();
            if valid {
                if let Some(start) = bad_start.take() {
                    bad.push((start, pos));
                }
                kept.extend_from_slice(&b[pos..end]);
            } else {
                bad_start.get_or_insert(pos);
            }
            pos = end;
        }
        if let Some(start) = bad_start {
            bad.push((start, b.len()));
        }
        for (start, end) in bad {
            let q = self.quarantine(path, start as u64, &b[start..end])?;
            self.act(Action {
                action: "quarantine",
                file: path.to_owned(),
                offset: Some(start as u64),
                size: Some((end - start) as u64),
                quarantine: Some(q),
                detail: "journal records that fail their check (a settle they recorded is lost: \
                         that message may be delivered again)"
                    .into(),
            });
        }
        self.replace(path, &kept)?;
        self.act(Action {
            action: "rewrite",
            file: path.to_owned(),
            offset: None,
            size: None,
            quarantine: None,
            detail: format!(
                "with its {} valid records",
                output::count(((kept.len() - header_len) / journal::RECORD_LEN) as u64)
            ),
        });
        Ok(())
    }
}
