//! `millpond import`: check an export file whole, then push its messages
//! in batches (one fsync per batch).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use millpond::{Durability, PushOptions};
use serde_json::json;

use crate::args::JsonArg;
use crate::failure::{Error, damaged, error};
use crate::handoff::format::{self, ReadError, Reader};
use crate::handoff::resume;
use crate::progress::Progress;
use crate::{Global, Outcome, open, output};

/// Messages pushed between two fsyncs.
const BATCH_LEN: u64 = 1000;
/// Payload bytes pushed between two fsyncs.
const BATCH_BYTES: u64 = 8 << 20;
/// Batches between two writes of the import record (each two fsyncs; one
/// per batch made an import of 1 M messages 1.5x slower). A rerun after a
/// crash matches every message pushed since the last record, so this
/// bounds that work, not what the rerun gets right.
const RECORD_EVERY: u64 = 16;

pub const HELP: &str = "\
The whole file is read and checked first (every record's checksum, the
count and checksum in the end record, nothing missing or after the end); a
damaged or truncated file is refused with the offset of the damage and
nothing is imported. Then the messages are pushed in file order with their
priorities and remaining delays (counted again from the import), 1000 to an
fsync, into the queue named in the file or --queue (created if needed). The
messages get new ids. Buried messages are skipped unless --include-buried
(then they are ready).

The store records how far the import got (in <store>/imports/, written
before every 16th batch). Run again after a crash or a kill, the same command
finishes the import: the messages that reached the queue since the record
was written are found (same payload and priority, from the id it names) and
not pushed again. Run again after it finished, it pushes nothing; --again
imports the file a second time.

Output: what was imported; with --json one object:
  {\"file\": \"jobs.mpx\", \"queue\": \"jobs\", \"imported\": 41, \"first_id\": 1,
   \"last_id\": 41, \"delayed\": 1, \"skipped_buried\": 1, \"already_imported\": false,
   \"found_from_interrupted_run\": 0}
Exits with 1 when the file is damaged.

Examples:
  millpond --store /new import jobs.mpx
  millpond import jobs.mpx -q jobs-replay --include-buried";

/// Arguments of `millpond import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The export file.
    file: PathBuf,

    /// Push into this queue instead of the one named in the file.
    #[arg(long, short = 'q', value_name = "NAME")]
    queue: Option<String>,

    /// Import buried messages too, as ready messages.
    #[arg(long)]
    include_buried: bool,

    /// Import the file again into a store that finished importing it (an
    /// interrupted import of it is finished instead, not started over).
    #[arg(long)]
    again: bool,

    #[command(flatten)]
    json: JsonArg,
}

fn open_file(path: &Path) -> Result<(Reader<BufReader<File>>, format::Header), Error> {
    let file = File::open(path).map_err(|e| error(format!("open {}: {e}", path.display())))?;
    Reader::open(BufReader::new(file)).map_err(|e| refused(path, e))
}

fn refused(path: &Path, e: ReadError) -> Error {
    match e {
        ReadError::Damage { offset, detail } => damaged(format!(
            "{} is damaged at offset {offset}: {detail}; nothing was imported",
            path.display()
        )),
        ReadError::Version(_) => error(format!("{}: {e}", path.display())),
        ReadError::Io(e) => error(format!("read {}: {e}", path.display())),
    }
}

/// Runs `millpond import`.
///
/// # Errors
///
/// A damaged file (exit code 1), an unreadable import record, an
/// interrupted import of the file into another queue, the engine's errors,
/// I/O errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    // 1. Check the whole file.
    let file_bytes = std::fs::metadata(&args.file)
        .map_err(|e| error(format!("open {}: {e}", args.file.display())))?
        .len();
    let (mut reader, header) = open_file(&args.file)?;
    let mut records = 0u64;
    {
        let progress = Progress::bytes(file_bytes, "check");
        while reader.next().map_err(|e| refused(&args.file, e))?.is_some() {
            records += 1;
            progress.set_position(reader.offset());
        }
    }
    let checksum = reader.checksum().expect("read to its end record");
    tracing::info!(
        "{} checked: {records} records of queue {:?}, group {:?}",
        args.file.display(),
        header.queue,
        header.group
    );

    // 2. What an earlier run of this import did.
    let store = open::open(&global.store, Durability::Buffered)?;
    let record_path = resume::path(&global.store, header.exported_ms, checksum);
    let earlier = resume::load(&record_path)?;
    if let Some(done) = earlier.as_ref().filter(|s| s.complete && !args.again) {
        store.close()?;
        report(&args, done, 0, true)?;
        return Ok(Outcome::Success);
    }
    let interrupted = earlier.filter(|s| !s.complete);
    if let Some(s) = &interrupted {
        let queue_differs = args.queue.as_ref().is_some_and(|q| *q != s.queue);
        if queue_differs || s.include_buried != args.include_buried {
            return Err(error(format!(
                "an interrupted import of {} into queue {:?}{} is recorded in {}: run it again \
                 with the same queue and --include-buried setting to finish it, or remove \
                 the record to import from the start (which pushes again what it pushed)",
                args.file.display(),
                s.queue,
                if s.include_buried {
                    " with --include-buried"
                } else {
                    ""
                },
                record_path.display()
            )));
        }
    }
    let queue_name = interrupted.as_ref().map_or_else(
        || args.queue.clone().unwrap_or_else(|| header.queue.clone()),
        |s| s.queue.clone(),
    );
    let queue = store.queue(&queue_name)?;
    let resumed = interrupted.is_some();
    let mut state = interrupted
        .unwrap_or_else(|| resume::State::new(&args.file, &queue_name, args.include_buried));

    // 3. Push, in batches; every RECORD_EVERY-th is announced in the record
    // before it starts.
    let (mut reader, _) = open_file(&args.file)?;
    for _ in 0..state.records_done {
        reader.next().map_err(|e| refused(&args.file, e))?;
    }
    // On a resume, the interrupted batch's messages that reached the queue
    // come first from the id it started at; they are counted, not pushed.
    let mut landed = resumed.then(|| queue.reader(state.next_id));
    let mut found = 0u64;
    let mut batch_open = false;
    let mut batches = 0u64;
    let mut unflushed = (0u64, 0u64);
    {
        let progress = Progress::count(records, "import");
        progress.set_position(state.records_done);
        while let Some(record) = reader.next().map_err(|e| refused(&args.file, e))? {
            progress.inc(1);
            if record.state == format::STATE_BURIED && !args.include_buried {
                state.records_done += 1;
                state.skipped_buried += 1;
                continue;
            }
            let delayed = u64::from(record.delay_ms > 0);
            if let Some(messages) = &mut landed {
                match messages.next().transpose()? {
                    Some(m) if m.payload == record.payload && m.priority == record.priority => {
                        found += 1;
                        state.records_done += 1;
                        state.imported += 1;
                        state.delayed += delayed;
                        state.first_id.get_or_insert(m.id);
                        state.last_id = Some(m.id);
                        continue;
                    }
                    _ => landed = None,
                }
            }
            if !batch_open {
                if batches.is_multiple_of(RECORD_EVERY) {
                    state.next_id = queue.next_id();
                    resume::save(&record_path, &state)?;
                }
                batches += 1;
                batch_open = true;
            }
            let options = PushOptions {
                priority: record.priority,
                delay: Duration::from_millis(record.delay_ms),
            };
            let id = queue.push_with(&record.payload, options)?;
            state.first_id.get_or_insert(id);
            state.last_id = Some(id);
            state.records_done += 1;
            state.imported += 1;
            state.delayed += delayed;
            unflushed = (unflushed.0 + 1, unflushed.1 + record.payload.len() as u64);
            if unflushed.0 >= BATCH_LEN || unflushed.1 >= BATCH_BYTES {
                queue.flush()?;
                unflushed = (0, 0);
                batch_open = false;
            }
        }
    }
    queue.flush()?;
    state.complete = true;
    resume::save(&record_path, &state)?;
    drop(queue);
    store.close()?;
    report(&args, &state, found, false)?;
    Ok(Outcome::Success)
}

/// Prints what the import did (or, `already`, what an earlier run did).
fn report(args: &Args, s: &resume::State, found: u64, already: bool) -> Result<(), Error> {
    if args.json.json {
        output::json_document(&json!({
            "file": args.file.display().to_string(),
            "queue": s.queue,
            "imported": s.imported,
            "first_id": s.first_id,
            "last_id": s.last_id,
            "delayed": s.delayed,
            "skipped_buried": s.skipped_buried,
            "already_imported": already,
            "found_from_interrupted_run": found,
        }))?;
        return Ok(());
    }
    let ids = match (s.first_id, s.last_id) {
        (Some(a), Some(b)) => format!(" as ids {a}..={b}"),
        _ => String::new(),
    };
    if already {
        println!(
            "{} was already imported into queue {:?}{ids}: nothing pushed (--again imports \
             it a second time)",
            args.file.display(),
            s.queue
        );
        return Ok(());
    }
    println!(
        "imported {} into queue {:?}{ids} ({} delayed)",
        output::plural(s.imported, "message"),
        s.queue,
        output::count(s.delayed)
    );
    if found > 0 {
        println!(
            "{} of them were in the queue already, from an interrupted run of this import",
            output::plural(found, "message")
        );
    }
    if s.skipped_buried > 0 {
        println!(
            "skipped {} (--include-buried imports them as ready)",
            output::plural(s.skipped_buried, "buried message")
        );
    }
    Ok(())
}
