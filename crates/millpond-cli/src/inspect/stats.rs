//! `millpond stats`: every queue's log and every group's counts.

use std::time::Duration;

use millpond::Durability;
use serde_json::json;

use crate::args::JsonArg;
use crate::failure::Error;
use crate::inspect::figures;
use crate::output::{self, Table};
use crate::{Global, Outcome, open};

pub const HELP: &str = "\
Output: two tables, queues (messages in the log, ids, segments, size on
disk) and groups (ready, reserved, delayed, buried, acked, dead-lettered,
age of the oldest ready message). With --json one object:
  {\"store\": \"./millpond-data\", \"queues\": [{\"name\": \"jobs\", \"first_id\": 1,
   \"next_id\": 101, \"messages\": 100, \"segments\": 1, \"bytes_on_disk\": 6132,
   \"groups\": [{\"name\": \"default\", \"ready\": 99, \"reserved\": 0, \"delayed\": 1,
   \"buried\": 0, \"acked_total\": 0, \"dead_lettered_total\": 0,
   \"retention_lost_total\": 0, \"oldest_ready_age_ms\": 5120}]}]}

Examples:
  millpond stats
  millpond stats -q jobs --json | jq '.queues[0].groups[0].ready'";

/// Arguments of `millpond stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    queue: Option<String>,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond stats`.
///
/// # Errors
///
/// No such store or queue; the engine's errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let all = figures(&store, args.queue.as_deref())?;
    store.close()?;
    if args.json.json {
        let queues: Vec<_> = all.iter().map(|q| q.to_json()).collect();
        output::json_document(&json!({
            "store": global.store.display().to_string(),
            "queues": queues,
        }))?;
        return Ok(Outcome::Success);
    }
    if all.is_empty() {
        println!(
            "store {}: no queues yet (`millpond push --queue NAME` creates one)",
            global.store.display()
        );
        return Ok(Outcome::Success);
    }
    let mut queues = Table::new(&[
        "QUEUE",
        ">MESSAGES",
        ">FIRST ID",
        ">NEXT ID",
        ">SEGMENTS",
        ">ON DISK",
    ]);
    let mut groups = Table::new(&[
        "QUEUE",
        "GROUP",
        ">READY",
        ">RESERVED",
        ">DELAYED",
        ">BURIED",
        ">ACKED",
        ">DEAD-LETTERED",
        ">OLDEST READY",
    ]);
    for q in &all {
        queues.row(vec![
            q.name.clone(),
            output::count(q.messages()),
            q.log.first_id.to_string(),
            q.log.next_id.to_string(),
            output::count(q.log.segments as u64),
            output::bytes(q.log.bytes_on_disk),
        ]);
        for (name, s) in &q.groups {
            let oldest = if s.ready == 0 {
                "-".to_owned()
            } else {
                output::duration(Duration::from_millis(s.oldest_ready_age_ms))
            };
            groups.row(vec![
                q.name.clone(),
                name.clone(),
                output::count(s.ready),
                output::count(s.reserved),
                output::count(s.delayed),
                output::count(s.buried),
                output::count(s.acked_total),
                output::count(s.dead_lettered_total),
                oldest,
            ]);
        }
    }
    print!("{}\n{}", queues.render(), groups.render());
    Ok(Outcome::Success)
}
