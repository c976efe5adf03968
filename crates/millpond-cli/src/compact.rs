//! `millpond compact`: one compaction pass over every queue now, with a
//! summary of the space given back.

use millpond::Durability;
use serde_json::json;

use crate::args::JsonArg;
use crate::failure::Error;
use crate::progress::Progress;
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
A sealed segment whose every message is finished for every group is
deleted; one that is mostly finished (live bytes under 25 %) is rewritten
with its live messages. The newest segment is rolled and deleted when
every group finished it and it holds 1 MiB or more; a group that lags
keeps the segments it has not read. A group journal holding 16 KiB or
more is replaced by a checkpoint of what the group still tracks.

Output: the bytes reclaimed and what was done; with --json one object:
  {\"bytes_reclaimed\": 67108864, \"segments_deleted\": 1, \"segments_rewritten\": 0,
   \"segments_dropped\": 0, \"journals_checkpointed\": 1,
   \"journal_bytes_reclaimed\": 65536, \"segments\": 1, \"bytes_on_disk\": 1024,
   \"live_bytes\": 1024, \"elapsed_ms\": 3}

Examples:
  millpond compact
  millpond compact --json | jq .bytes_reclaimed";

/// Arguments of `millpond compact`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond compact`.
///
/// # Errors
///
/// No such store; the engine's errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let before: u64 = store
        .queue_names()
        .iter()
        .map(|n| Ok(store.queue(n)?.log_stats()?.bytes_on_disk))
        .sum::<Result<u64, millpond::Error>>()?;
    let report = {
        let _spinner = Progress::spinner("compacting");
        store.compact_now()?
    };
    store.close()?;
    if args.json.json {
        output::json_document(&json!({
            "bytes_reclaimed": report.bytes_reclaimed,
            "bytes_before": before,
            "segments_deleted": report.segments_deleted,
            "segments_rewritten": report.segments_rewritten,
            "segments_dropped": report.segments_dropped,
            "retention_lost": report.retention_lost,
            "journals_checkpointed": report.journals_checkpointed,
            "journal_bytes_reclaimed": report.journal_bytes_reclaimed,
            "segments": report.segments,
            "bytes_on_disk": report.bytes_on_disk,
            "live_bytes": report.live_bytes,
            "elapsed_ms": report.duration.as_millis() as u64,
        }))?;
        return Ok(Outcome::Success);
    }
    println!(
        "reclaimed {} of {}: {} deleted, {} rewritten, {} dropped by retention",
        output::bytes(report.bytes_reclaimed),
        output::bytes(before),
        output::plural(report.segments_deleted, "segment"),
        output::count(report.segments_rewritten),
        output::count(report.segments_dropped),
    );
    if report.journals_checkpointed > 0 {
        println!(
            "reclaimed {} of group journals: {} replaced by a checkpoint",
            output::bytes(report.journal_bytes_reclaimed),
            output::plural(report.journals_checkpointed, "journal"),
        );
    }
    println!(
        "now {}, {} on disk, {} of it live; took {}",
        output::plural(report.segments, "segment"),
        output::bytes(report.bytes_on_disk),
        output::bytes(report.live_bytes),
        output::duration(report.duration)
    );
    if report.retention_lost > 0 {
        println!(
            "retention dropped {} before every group had finished them",
            output::plural(report.retention_lost, "message")
        );
    }
    Ok(Outcome::Success)
}
