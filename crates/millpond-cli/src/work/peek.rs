//! `millpond peek`: show a message and where it is in a group, without
//! reserving it.

use std::io::Write;

use millpond::{Durability, Peeked, Store};

use crate::args::{GroupArgs, JsonArg};
use crate::failure::Error;
use crate::work::{peeked_json, state_text};
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
Output: a line with the id, state, attempts, priority, age and size, then
the payload (UTF-8 text as is, binary summarised); with --raw the payload
bytes only; with --json one object:
  {\"id\": 7, \"state\": \"delayed\", \"until_ms\": 1700000030000,
   \"remaining_ms\": 25000, \"attempts\": 1, \"priority\": 0,
   \"enqueued_ms\": 1700000000000, \"size\": 5, \"payload\": \"hello\"}
States: ready, delayed, reserved, buried. Exits with 4 when there is no such
message (finished, never pushed, or none in that state).

Examples:
  millpond peek -q jobs 7
  millpond peek -q jobs --ready          the message the next reserve gets
  millpond peek -q jobs --buried --json";

/// Arguments of `millpond peek`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "ready", "delayed", "buried"])))]
pub struct Args {
    /// The message's id.
    id: Option<u64>,

    /// The message the next reserve would get.
    #[arg(long)]
    ready: bool,

    /// The delayed message due first.
    #[arg(long)]
    delayed: bool,

    /// The oldest buried message.
    #[arg(long)]
    buried: bool,

    /// Print the payload bytes only.
    #[arg(long, conflicts_with = "json")]
    raw: bool,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond peek`.
///
/// # Errors
///
/// No such store, queue or group; the engine's errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let result = peek_in(&store, &args);
    let peeked = open::close_after(store, result)?;
    let Some(p) = peeked else {
        let what = match args.id {
            Some(id) => format!("message {id} (finished, or never pushed)"),
            None if args.ready => "ready message".to_owned(),
            None if args.delayed => "delayed message".to_owned(),
            None => "buried message".to_owned(),
        };
        eprintln!(
            "no {what} in queue {:?}, group {:?}",
            args.target.queue, args.target.group
        );
        return Ok(Outcome::Empty);
    };
    let now = output::now_ms();
    if args.json.json {
        output::json_line(&peeked_json(&p, now))?;
    } else if args.raw {
        let mut out = std::io::stdout().lock();
        out.write_all(&p.payload)?;
        out.flush()?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "id {}  {}  attempts {}  priority {}  enqueued {}  {}",
            p.id,
            state_text(p.state, now),
            p.attempts,
            p.priority,
            output::relative(p.enqueued_ms, now),
            output::bytes(p.payload.len() as u64)
        )?;
        match std::str::from_utf8(&p.payload) {
            Ok(text) => writeln!(out, "{text}")?,
            Err(_) => writeln!(
                out,
                "{}; --raw or --json shows it",
                output::preview(&p.payload, 0)
            )?,
        }
    }
    Ok(Outcome::Success)
}

fn peek_in(store: &Store, args: &Args) -> Result<Option<Peeked>, Error> {
    let queue = open::queue(store, &args.target.queue)?;
    let group = open::group(&queue, &args.target.group)?;
    Ok(match args.id {
        Some(id) => group.peek(id)?,
        None if args.ready => group.peek_ready()?,
        None if args.delayed => group.peek_delayed()?,
        None => group.peek_buried()?,
    })
}
