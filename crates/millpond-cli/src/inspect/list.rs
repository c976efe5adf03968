//! `millpond queues` and `millpond groups`: what the store holds.

use millpond::Durability;
use serde_json::{Value, json};

use crate::args::JsonArg;
use crate::failure::Error;
use crate::inspect::{figures, group_json};
use crate::output::{self, Table};
use crate::{Global, Outcome, open};

pub const HELP_QUEUES: &str = "\
Output: a table of queues with their messages, groups and size on disk;
with --json an array:
  [{\"name\": \"jobs\", \"messages\": 100, \"first_id\": 1, \"next_id\": 101,
    \"segments\": 1, \"bytes_on_disk\": 6132, \"groups\": [\"default\"]}]

Examples:
  millpond queues
  millpond queues --json | jq -r '.[].name'";

pub const HELP_GROUPS: &str = "\
Output: a table of groups with their counts; with --json an array:
  [{\"queue\": \"jobs\", \"name\": \"default\", \"ready\": 99, \"reserved\": 0,
    \"delayed\": 1, \"buried\": 0, \"acked_total\": 0, ...}]

Examples:
  millpond groups
  millpond groups -q jobs --json";

/// Arguments of `millpond queues`.
#[derive(Debug, clap::Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `millpond groups`.
#[derive(Debug, clap::Args)]
pub struct GroupsArgs {
    /// Only the groups of this queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    queue: Option<String>,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond queues`.
///
/// # Errors
///
/// No such store; the engine's errors.
pub fn queues(global: &Global, args: QueuesArgs) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let all = figures(&store, None)?;
    store.close()?;
    if args.json.json {
        let list: Vec<Value> = all
            .iter()
            .map(|q| {
                json!({
                    "name": q.name,
                    "messages": q.messages(),
                    "first_id": q.log.first_id,
                    "next_id": q.log.next_id,
                    "segments": q.log.segments,
                    "bytes_on_disk": q.log.bytes_on_disk,
                    "groups": q.groups.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json_document(&Value::Array(list))?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&["QUEUE", ">MESSAGES", ">NEXT ID", ">GROUPS", ">ON DISK"]);
    for q in &all {
        table.row(vec![
            q.name.clone(),
            output::count(q.messages()),
            q.log.next_id.to_string(),
            q.groups.len().to_string(),
            output::bytes(q.log.bytes_on_disk),
        ]);
    }
    print!("{}", table.render());
    Ok(Outcome::Success)
}

/// Runs `millpond groups`.
///
/// # Errors
///
/// No such store or queue; the engine's errors.
pub fn groups(global: &Global, args: GroupsArgs) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let all = figures(&store, args.queue.as_deref())?;
    store.close()?;
    if args.json.json {
        let mut list = Vec::new();
        for q in &all {
            for (name, s) in &q.groups {
                let mut v = group_json(name, s);
                v["queue"] = Value::from(q.name.clone());
                list.push(v);
            }
        }
        output::json_document(&Value::Array(list))?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&[
        "QUEUE",
        "GROUP",
        ">READY",
        ">RESERVED",
        ">DELAYED",
        ">BURIED",
        ">ACKED",
    ]);
    for q in &all {
        for (name, s) in &q.groups {
            table.row(vec![
                q.name.clone(),
                name.clone(),
                output::count(s.ready),
                output::count(s.reserved),
                output::count(s.delayed),
                output::count(s.buried),
                output::count(s.acked_total),
            ]);
        }
    }
    print!("{}", table.render());
    Ok(Outcome::Success)
}
