//! `millpond export`: a group's unfinished messages (ready, delayed, reserved,
//! buried) with their ids, priorities, remaining delays and payloads, in
//! one file with per-record checksums (see [`format`]).
//!
//! Reserving is destructive, so the export reads the log with a `Reader`
//! and asks `Group::peek` where each message is: finished messages (`None`)
//! are left out.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use millpond::{Durability, MessageState};
use serde_json::json;

use crate::args::{GroupArgs, JsonArg};
use crate::failure::{Error, error};
use crate::handoff::format::{self, Header, Record, Writer};
use crate::progress::Progress;
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
The file holds, for every message the group has not finished, its id, state
(ready, delayed, reserved or buried), attempts, priority, remaining delay
and payload; each record has a CRC-32 and the end record counts them and
checksums the whole file (layout: docs/format.md, \"Export file\"). It is
written to FILE.tmp, fsynced and renamed, so FILE is complete or absent.

Output: what was exported; with --json one object:
  {\"file\": \"jobs.mpx\", \"queue\": \"jobs\", \"group\": \"default\", \"messages\": 42,
   \"ready\": 40, \"delayed\": 1, \"buried\": 1, \"payload_bytes\": 4200, \"file_bytes\": 6300}

Examples:
  millpond export -q jobs --out jobs.mpx
  millpond --store /old export -q jobs --out jobs.mpx && millpond --store /new import jobs.mpx";

/// Arguments of `millpond export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: GroupArgs,

    /// The file to write.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,

    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,

    #[command(flatten)]
    json: JsonArg,
}

/// Counts by state.
#[derive(Debug, Default)]
struct Counts {
    messages: u64,
    ready: u64,
    delayed: u64,
    reserved: u64,
    buried: u64,
    payload_bytes: u64,
}

/// Runs `millpond export`.
///
/// # Errors
///
/// No such store, queue or group; FILE exists (without `--force`); the
/// engine's errors (damage in the log stops the export); I/O errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    if args.out.exists() && !args.force {
        return Err(error(format!(
            "{} exists; pass --force to replace it",
            args.out.display()
        )));
    }
    let store = open::existing(&global.store, Durability::Buffered)?;
    let queue = open::queue(&store, &args.target.queue)?;
    let group = open::group(&queue, &args.target.group)?;
    let stats = queue.log_stats()?;
    let now = output::now_ms();
    let tmp = PathBuf::from(format!("{}.tmp", args.out.display()));
    let file = File::create(&tmp).map_err(|e| error(format!("create {}: {e}", tmp.display())))?;
    let io = |e: std::io::Error| error(format!("write {}: {e}", tmp.display()));
    let header = Header {
        queue: args.target.queue.clone(),
        group: args.target.group.clone(),
        exported_ms: now,
    };
    let mut writer = Writer::new(BufWriter::new(file), &header).map_err(io)?;
    let mut counts = Counts::default();
    {
        let progress = Progress::count(stats.next_id - stats.first_id, "export");
        for message in queue.reader(stats.first_id) {
            let message = message?;
            progress.set_position(message.id - stats.first_id);
            let Some(peeked) = group.peek(message.id)? else {
                continue; // Finished for this group.
            };
            let (state, delay_ms) = match peeked.state {
                MessageState::Ready => (format::STATE_READY, 0),
                MessageState::Delayed(t) => (format::STATE_DELAYED, t.saturating_sub(now)),
                MessageState::Reserved(_) => (format::STATE_RESERVED, 0),
                MessageState::Buried => (format::STATE_BURIED, 0),
            };
            match state {
                format::STATE_READY => counts.ready += 1,
                format::STATE_DELAYED => counts.delayed += 1,
                format::STATE_RESERVED => counts.reserved += 1,
                _ => counts.buried += 1,
            }
            counts.messages += 1;
            counts.payload_bytes += message.payload.len() as u64;
            writer
                .record(&Record {
                    id: message.id,
                    state,
                    enqueued_ms: peeked.enqueued_ms,
                    delay_ms,
                    priority: peeked.priority,
                    attempts: peeked.attempts,
                    payload: message.payload,
                })
                .map_err(io)?;
        }
    }
    let file = writer
        .finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop((group, queue));
    store.close()?;
    std::fs::rename(&tmp, &args.out).map_err(|e| {
        error(format!(
            "rename {} to {}: {e}",
            tmp.display(),
            args.out.display()
        ))
    })?;
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| error(format!("fsync directory {}: {e}", dir.display())))?;
    let file_bytes = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    if args.json.json {
        output::json_document(&json!({
            "file": args.out.display().to_string(),
            "queue": args.target.queue,
            "group": args.target.group,
            "messages": counts.messages,
            "ready": counts.ready,
            "delayed": counts.delayed,
            "reserved": counts.reserved,
            "buried": counts.buried,
            "payload_bytes": counts.payload_bytes,
            "file_bytes": file_bytes,
        }))?;
    } else {
        println!(
            "exported {} of queue {:?}, group {:?} ({} ready, {} delayed, {} buried; {} of payload) to {} ({})",
            output::plural(counts.messages, "unfinished message"),
            args.target.queue,
            args.target.group,
            output::count(counts.ready + counts.reserved),
            output::count(counts.delayed),
            output::count(counts.buried),
            output::bytes(counts.payload_bytes),
            args.out.display(),
            output::bytes(file_bytes)
        );
    }
    Ok(Outcome::Success)
}
