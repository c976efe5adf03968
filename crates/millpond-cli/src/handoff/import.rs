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
use crate::progress::Progress;
use crate::{Global, Outcome, open, output};

/// Messages pushed between two fsyncs.
const BATCH_LEN: u64 = 1000;
/// Payload bytes pushed between two fsyncs.
const BATCH_BYTES: u64 = 8 << 20;

pub const HELP: &str = "\
The whole file is read and checked first (every record's checksum, the
count and checksum in the end record, nothing missing or after the end); a
damaged or truncated file is refused with the offset of the damage and
nothing is imported. Then the messages are pushed in file order with their
priorities and remaining delays (counted again from the import), 1000 to an
fsync, into the queue named in the file or --queue (created if needed). The
messages get new ids. Buried messages are skipped unless --include-buried
(then they are ready). Importing a file twice pushes its messages twice.

Output: what was imported; with --json one object:
  {\"file\": \"jobs.mpx\", \"queue\": \"jobs\", \"imported\": 41, \"first_id\": 1,
   \"last_id\": 41, \"delayed\": 1, \"skipped_buried\": 1}
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
/// A damaged file (exit code 1), the engine's errors, I/O errors.
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
    tracing::info!(
        "{} checked: {records} records of queue {:?}, group {:?}",
        args.file.display(),
        header.queue,
        header.group
    );

    // 2. Push.
    let queue_name = args.queue.clone().unwrap_or_else(|| header.queue.clone());
    let store = open::open(&global.store, Durability::Buffered)?;
    let queue = store.queue(&queue_name)?;
    let (mut reader, _) = open_file(&args.file)?;
    let (mut imported, mut delayed, mut skipped) = (0u64, 0u64, 0u64);
    let (mut first_id, mut last_id) = (None, None);
    let mut unflushed = (0u64, 0u64);
    {
        let progress = Progress::count(records, "import");
        while let Some(record) = reader.next().map_err(|e| refused(&args.file, e))? {
            progress.inc(1);
            if record.state == format::STATE_BURIED && !args.include_buried {
                skipped += 1;
                continue;
            }
            let options = PushOptions {
                priority: record.priority,
                delay: Duration::from_millis(record.delay_ms),
            };
            let id = queue.push_with(&record.payload, options)?;
            first_id.get_or_insert(id);
            last_id = Some(id);
            imported += 1;
            delayed += u64::from(record.delay_ms > 0);
            unflushed = (unflushed.0 + 1, unflushed.1 + record.payload.len() as u64);
            if unflushed.0 >= BATCH_LEN || unflushed.1 >= BATCH_BYTES {
                queue.flush()?;
                unflushed = (0, 0);
            }
        }
    }
    queue.flush()?;
    drop(queue);
    store.close()?;
    if args.json.json {
        output::json_document(&json!({
            "file": args.file.display().to_string(),
            "queue": queue_name,
            "imported": imported,
            "first_id": first_id,
            "last_id": last_id,
            "delayed": delayed,
            "skipped_buried": skipped,
        }))?;
    } else {
        let ids = match (first_id, last_id) {
            (Some(a), Some(b)) => format!(" as ids {a}..={b}"),
            _ => String::new(),
        };
        println!(
            "imported {} into queue {queue_name:?}{ids} ({} delayed)",
            output::plural(imported, "message"),
            output::count(delayed)
        );
        if skipped > 0 {
            println!(
                "skipped {} (--include-buried imports them as ready)",
                output::plural(skipped, "buried message")
            );
        }
    }
    Ok(Outcome::Success)
}
