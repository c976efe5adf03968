//! `millpond dump`: decode a queue's segment files with the engine's frame
//! and segment codecs, without opening the store (so it also works on a
//! store another process holds, or one that does not open).

use std::io::Write;
use std::path::Path;

use millpond::log::segment;
use serde_json::{Map, Value, json};

use crate::args::{JsonArg, QueueArg};
use crate::failure::{Error, error};
use crate::integrity::walk::{self, Frames, Item};
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
Reads the files directly (no lock, no recovery): safe on a store in use,
where the newest segment may end in a partly written frame.

Output: for each segment a line with its file, size and header check, then
one line per frame: id, offset in the file, size in bytes (the whole
frame), timestamp (UTC), priority, not-before time, CRC status, and the
start of the payload; damaged bytes appear as lines with CRC status BAD,
their offset, size and what failed. With --json one object per line:
  {\"segment\": \"…/00000000000000000001.seg\", \"offset\": 32, \"size\": 33, \"id\": 1,
   \"timestamp_ms\": 1700000000000, \"priority\": 0, \"not_before_ms\": 0,
   \"crc\": \"ok\", \"payload_size\": 5}
and {\"segment\": …, \"offset\": 4128, \"size\": 68, \"crc\": \"bad\", \"detail\": …} for
damage; --payload adds \"payload\" (or \"payload_b64\").

Examples:
  millpond dump -q jobs --limit 20
  millpond dump -q jobs --from 5000 --json --payload | jq .payload";

/// Arguments of `millpond dump`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    queue: QueueArg,

    /// Start at this id.
    #[arg(long, default_value_t = 0)]
    from: u64,

    /// Show at most this many frames (and damaged ranges).
    #[arg(long)]
    limit: Option<u64>,

    /// Include payloads in --json output.
    #[arg(long)]
    payload: bool,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond dump`.
///
/// # Errors
///
/// No such store or queue; I/O errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    open::require_store(&global.store)?;
    let dir = open::queue_dir(&global.store, &args.queue.queue);
    if !dir.is_dir() {
        return Err(error(format!(
            "no queue {:?} in {} (no directory {}); `millpond queues` lists them",
            args.queue.queue,
            global.store.display(),
            dir.display()
        )));
    }
    let segments = walk::segments(&dir)?;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    let mut damaged = false;
    for (i, seg) in segments.iter().enumerate() {
        if left == 0 {
            break;
        }
        // Skip segments that end before --from.
        if segments
            .get(i + 1)
            .is_some_and(|next| next.first_id <= args.from)
        {
            continue;
        }
        let bytes = std::fs::read(&seg.path)
            .map_err(|e| error(format!("read {}: {e}", seg.path.display())))?;
        let header = segment::decode_header(&bytes, seg.first_id);
        if !args.json.json {
            writeln!(
                out,
                "segment {}: {}, first id {}, header {}",
                seg.path.display(),
                output::bytes(bytes.len() as u64),
                seg.first_id,
                match &header {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("BAD: {}", walk::header_problem(e)),
                }
            )?;
            writeln!(
                out,
                "{:>12} {:>10} {:>8}  {:<24}  {:>8}  {:<24}  {:<3}  PAYLOAD",
                "ID", "OFFSET", "SIZE", "TIMESTAMP", "PRIORITY", "NOT BEFORE", "CRC"
            )?;
        } else if let Err(e) = &header {
            output::json_line(&json!({
                "segment": seg.path.display().to_string(),
                "offset": 0,
                "size": segment::HEADER_LEN,
                "crc": "bad",
                "detail": walk::header_problem(e),
            }))?;
        }
        damaged |= header.is_err();
        if matches!(header, Err(segment::HeaderError::Version(_))) {
            continue;
        }
        for item in Frames::new(&bytes, seg.first_id) {
            if left == 0 {
                break;
            }
            if let Item::Frame { frame, .. } = &item
                && frame.id < args.from
            {
                continue;
            }
            damaged |= !matches!(item, Item::Frame { .. } | Item::Zeros { .. });
            left -= 1;
            if args.json.json {
                output::json_line(&item_json(&seg.path, &item, args.payload))?;
            } else {
                writeln!(out, "{}", item_text(&item))?;
            }
        }
    }
    out.flush()?;
    if damaged {
        tracing::warn!("damaged bytes found; `millpond verify` reports them all");
    }
    Ok(Outcome::Success)
}

fn item_text(item: &Item<'_>) -> String {
    match item {
        Item::Frame { offset, frame } => format!(
            "{:>12} {:>10} {:>8}  {:<24}  {:>8}  {:<24}  {:<3}  {}",
            frame.id,
            offset,
            frame.len,
            output::iso_utc(frame.timestamp_ms),
            frame.attrs.priority,
            if frame.attrs.not_before_ms == 0 {
                "-".to_owned()
            } else {
                output::iso_utc(frame.attrs.not_before_ms)
            },
            "ok",
            output::preview(frame.payload, 40)
        ),
        Item::Damage {
            offset,
            len,
            detail,
        }
        | Item::Tail {
            offset,
            len,
            detail,
        } => format!(
            "{:>12} {:>10} {:>8}  {:<24}  {:>8}  {:<24}  {:<3}  {detail}",
            "-", offset, len, "-", "-", "-", "BAD"
        ),
        Item::Zeros { offset, len } => format!(
            "{:>12} {:>10} {:>8}  {:<24}  {:>8}  {:<24}  {:<3}  zeros up to the end of the file: space preallocated ahead of the frames",
            "-", offset, len, "-", "-", "-", "-"
        ),
        Item::Newer { offset, flags } => format!(
            "{:>12} {:>10} {:>8}  {:<24}  {:>8}  {:<24}  {:<3}  frame flags {flags:#x} of a newer millpond: \
             the rest of the file is not decoded",
            "-", offset, "-", "-", "-", "-", "NEW"
        ),
    }
}

fn item_json(path: &Path, item: &Item<'_>, with_payload: bool) -> Value {
    let mut m = Map::new();
    m.insert("segment".into(), path.display().to_string().into());
    match item {
        Item::Frame { offset, frame } => {
            m.insert("offset".into(), (*offset).into());
            m.insert("size".into(), frame.len.into());
            m.insert("id".into(), frame.id.into());
            m.insert("timestamp_ms".into(), frame.timestamp_ms.into());
            m.insert("priority".into(), frame.attrs.priority.into());
            m.insert("not_before_ms".into(), frame.attrs.not_before_ms.into());
            m.insert("crc".into(), "ok".into());
            m.insert("payload_size".into(), frame.payload.len().into());
            if with_payload {
                output::put_payload(&mut m, frame.payload);
            }
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
        } => {
            m.insert("offset".into(), (*offset).into());
            m.insert("size".into(), (*len).into());
            m.insert("crc".into(), "bad".into());
            m.insert("detail".into(), detail.clone().into());
        }
        Item::Zeros { offset, len } => {
            m.insert("offset".into(), (*offset).into());
            m.insert("size".into(), (*len).into());
            m.insert("crc".into(), "zeros".into());
            m.insert(
                "detail".into(),
                "zeros up to the end of the file: space preallocated ahead of the frames".into(),
            );
        }
        Item::Newer { offset, flags } => {
            m.insert("offset".into(), (*offset).into());
            m.insert("crc".into(), "newer".into());
            m.insert(
                "detail".into(),
                format!("frame flags {flags:#x} of a newer millpond").into(),
            );
        }
    }
    Value::Object(m)
}
