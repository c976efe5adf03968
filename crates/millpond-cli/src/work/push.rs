//! `millpond push`: one message from an argument, one per line of stdin,
//! or JSON Lines with payload, delay and priority.
//!
//! The store is opened with buffered durability and this command fsyncs
//! itself, as `--durability` says: under `sync` each batch (the lines that
//! were ready when the last batch ended, up to `--batch`) is written and
//! fsynced with one `fdatasync` before its ids are printed, so a pipe of
//! many lines shares fsyncs the way concurrent pushes do in the engine.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use millpond::{Durability, PushOptions, Queue};
use serde::Deserialize;
use serde_json::json;

use crate::args::{DurabilityArg, JsonArg, QueueArg, parse_duration};
use crate::failure::{Error, error};
use crate::{Global, Outcome, open, output};

/// Lines read ahead of the writer.
const READ_AHEAD_LINES: usize = 4096;

pub const HELP: &str = "\
Input:
  PAYLOAD         one message (with --priority and --delay)
  --stdin         every line of stdin is a message (the newline removed)
  --jsonl         every line of stdin is a JSON object:
                  {\"payload\": \"text\"} or {\"payload_b64\": \"AAEC\"},
                  optional \"priority\" (lower first, default 0) and
                  \"delay_ms\" (default 0); blank lines are skipped

Output: the id of each message, one per line, once its batch counts as
done under --durability; with --json one object at the end:
  {\"queue\": \"jobs\", \"pushed\": 3, \"first_id\": 1, \"last_id\": 3, \"bytes\": 42}
The queue is created if it does not exist.

Examples:
  millpond push 'resize image 42'
  millpond push -q jobs --priority 1 --delay 30s 'send reminder'
  seq 100000 | millpond push --stdin -q numbers --durability interval:100ms
  printf '{\"payload\":\"a\",\"priority\":2}\\n{\"payload_b64\":\"/wA=\"}\\n' | millpond push --jsonl";

/// Arguments of `millpond push`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The payload of one message.
    #[arg(conflicts_with_all = ["stdin", "jsonl"], required_unless_present_any = ["stdin", "jsonl"])]
    payload: Option<String>,

    /// Push every line of stdin as a message.
    #[arg(long, conflicts_with = "jsonl")]
    stdin: bool,

    /// Push every line of stdin, a JSON object, as a message.
    #[arg(long)]
    jsonl: bool,

    /// Priority of the message(s) from PAYLOAD or --stdin: lower is
    /// delivered first.
    #[arg(long, default_value_t = 0)]
    priority: u32,

    /// Delay of the message(s) from PAYLOAD or --stdin before they are
    /// ready (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    delay: Duration,

    /// Most messages written (and, under sync, fsynced) together.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    durability: DurabilityArg,

    #[command(flatten)]
    json: JsonArg,
}

/// One message to push.
#[derive(Debug)]
struct Item {
    payload: Vec<u8>,
    options: PushOptions,
}

/// A line of `--jsonl` input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonItem {
    payload: Option<String>,
    payload_b64: Option<String>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    priority: u32,
}

impl JsonItem {
    fn into_item(self) -> Result<Item, String> {
        let payload = match (self.payload, self.payload_b64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => output::decode_b64(&b64)?,
            (Some(_), Some(_)) => return Err("has both payload and payload_b64".into()),
            (None, None) => return Err("has neither payload nor payload_b64".into()),
        };
        Ok(Item {
            payload,
            options: PushOptions {
                priority: self.priority,
                delay: Duration::from_millis(self.delay_ms),
            },
        })
    }
}

/// What was pushed so far.
#[derive(Debug, Default)]
struct Pushed {
    count: u64,
    bytes: u64,
    first_id: Option<u64>,
    last_id: Option<u64>,
}

impl Pushed {
    fn describe(&self) -> String {
        match (self.first_id, self.last_id) {
            (Some(a), Some(b)) => {
                format!("{} (ids {a}..={b})", output::plural(self.count, "message"))
            }
            _ => "no messages".to_owned(),
        }
    }
}

/// Runs `millpond push`.
///
/// # Errors
///
/// Bad input (with its line number), the engine's errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::open(&global.store, Durability::Buffered)?;
    let queue = store.queue(&args.queue.queue)?;
    let mut pushed = Pushed::default();
    let result = match &args.payload {
        Some(payload) => {
            let item = Item {
                payload: payload.clone().into_bytes(),
                options: PushOptions {
                    priority: args.priority,
                    delay: args.delay,
                },
            };
            push_items(&queue, &[item], &mut pushed)
        }
        None => push_stream(&queue, &args, &mut pushed),
    };
    drop(queue);
    // Closing flushes and fsyncs whatever is left.
    let closed = store.close();
    if let Err(e) = result {
        let (_, message) = crate::failure::classify(&e);
        let done = if pushed.count == 0 {
            "nothing was pushed".to_owned()
        } else {
            format!("pushed {} before it, nothing after", pushed.describe())
        };
        return Err(error(format!("{message}; {done}")));
    }
    closed?;
    if args.json.json {
        output::json_document(&json!({
            "queue": args.queue.queue,
            "pushed": pushed.count,
            "first_id": pushed.first_id,
            "last_id": pushed.last_id,
            "bytes": pushed.bytes,
        }))?;
    } else if args.payload.is_some() {
        print_ids(&pushed, pushed.count)?;
    }
    tracing::info!("pushed {}", pushed.describe());
    Ok(Outcome::Success)
}

/// Reads stdin on a thread and pushes what it read in batches.
fn push_stream(queue: &Queue, args: &Args, pushed: &mut Pushed) -> Result<(), Error> {
    let (send, lines) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(READ_AHEAD_LINES);
    thread::Builder::new()
        .name("millpond-stdin".into())
        .spawn(move || read_lines(&send))?;
    let batch_max = args.batch as usize;
    // How often to fsync: after every batch, at an interval, or at the end.
    let flush_every = match args.durability.durability {
        Durability::Sync => Some(Duration::ZERO),
        Durability::Interval(d) => Some(d),
        Durability::Buffered => None,
    };
    let mut last_flush = Instant::now();
    let mut line_no = 0u64;
    let mut batch: Vec<Item> = Vec::new();
    loop {
        // The first line of a batch; under an interval, wake up to fsync
        // what was pushed when the interval passes.
        let first = match flush_every {
            Some(every) if !every.is_zero() => {
                match lines.recv_timeout(every.saturating_sub(last_flush.elapsed())) {
                    Ok(line) => Some(line),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        queue.flush()?;
                        last_flush = Instant::now();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
            _ => lines.recv().ok(),
        };
        let Some(first) = first else { break };
        // Then whatever else is ready, up to the batch size.
        let mut ended = false;
        let mut next = Some(first);
        let mut lines_in_batch = 0;
        while let Some(line) = next {
            line_no += 1;
            lines_in_batch += 1;
            let line = line.map_err(|e| error(format!("read stdin line {line_no}: {e}")))?;
            if let Some(item) = parse_line(line, args, line_no)? {
                batch.push(item);
            }
            next = None;
            if lines_in_batch < batch_max {
                match lines.try_recv() {
                    Ok(line) => next = Some(line),
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => ended = true,
                }
            }
        }
        let before = pushed.count;
        push_items(queue, &batch, pushed)?;
        batch.clear();
        if flush_every.is_some_and(|every| last_flush.elapsed() >= every) {
            queue.flush()?;
            last_flush = Instant::now();
        }
        if !args.json.json && pushed.count > before {
            print_ids(pushed, pushed.count - before)?;
        }
        if ended {
            break;
        }
    }
    queue.flush()?;
    Ok(())
}

/// Prints the ids of the last `n` messages pushed (they are consecutive:
/// this process owns the store).
fn print_ids(pushed: &Pushed, n: u64) -> Result<(), Error> {
    let Some(last) = pushed.last_id else {
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    for id in last + 1 - n..=last {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(())
}

fn read_lines(send: &mpsc::SyncSender<std::io::Result<Vec<u8>>>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if send.send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = send.send(Err(e));
                return;
            }
        }
    }
}

fn parse_line(line: Vec<u8>, args: &Args, line_no: u64) -> Result<Option<Item>, Error> {
    if !args.jsonl {
        return Ok(Some(Item {
            payload: line,
            options: PushOptions {
                priority: args.priority,
                delay: args.delay,
            },
        }));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: JsonItem = serde_json::from_slice(&line)
        .map_err(|e| error(format!("stdin line {line_no}: not a message object: {e}")))?;
    parsed
        .into_item()
        .map(Some)
        .map_err(|e| error(format!("stdin line {line_no}: the object {e}")))
}

/// Pushes items in order: runs without a priority or delay as one batch,
/// the others one by one.
fn push_items(queue: &Queue, items: &[Item], pushed: &mut Pushed) -> Result<(), Error> {
    let mut start = 0;
    while start < items.len() {
        let plain = items[start..]
            .iter()
            .take_while(|i| i.options == PushOptions::default())
            .count();
        let taken = &items[start..start + plain.max(1)];
        let ids = if plain > 0 {
            let payloads: Vec<&[u8]> = taken.iter().map(|i| i.payload.as_slice()).collect();
            queue.push_batch(&payloads)?
        } else {
            let id = queue.push_with(&taken[0].payload, taken[0].options)?;
            id..id + 1
        };
        assert_eq!(
            ids.end - ids.start,
            taken.len() as u64,
            "one id per message"
        );
        pushed.first_id.get_or_insert(ids.start);
        pushed.last_id = Some(ids.end - 1);
        pushed.count += taken.len() as u64;
        pushed.bytes += taken.iter().map(|i| i.payload.len() as u64).sum::<u64>();
        start += taken.len();
    }
    Ok(())
}
