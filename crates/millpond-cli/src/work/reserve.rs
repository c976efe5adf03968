//! `millpond reserve`: take ready messages for a consumer group with
//! [`Group::reserve`] and print them; with `--ack` settle them in the same
//! step, otherwise leave them reserved for `--lease`, for a later `millpond
//! ack` (see [the module above](super)).

use std::io::Write;
use std::time::Duration;

use millpond::{Delivery, Durability, Group, GroupOptions, MessageState, Store};
use serde_json::{Map, Value};

use crate::args::{GroupArgs, JsonArg, parse_duration, parse_lease};
use crate::failure::{Error, error};
use crate::{Global, Outcome, duration, open, output};

pub const HELP: &str = "\
Messages come in (priority, id) order. Without --ack each message stays
reserved for --lease after this command ends: no consumer gets it again
before then; settle it with `millpond ack ID`, `nack ID`, `bury ID`, or
extend the lease with `touch ID`. When the lease ends unsettled, the message
is delivered again with the attempt counted; after 10 attempts it is
buried. With --ack the messages are printed first and acknowledged once
printed. If writing them fails, or reserving stops at an error (damaged
bytes, say), the messages this command reserved are released at once, not
acknowledged, and will be delivered again.

Output: each payload followed by a newline (and, without --ack, a line on
stderr with its id); with --json one object per line:
  {\"id\": 7, \"attempt\": 1, \"priority\": 0, \"enqueued_ms\": 1700000000000,
   \"size\": 5, \"payload\": \"hello\", \"held_until_ms\": 1700000030000}
with \"payload_b64\" instead of \"payload\" when the payload is not UTF-8, and
\"held_until_ms\" (when the lease ends) only without --ack.
Exits with 4 when no message was ready (after --wait).

Examples:
  millpond reserve -q jobs --ack                  consume one message
  millpond reserve -q jobs --count 100 --ack --json > batch.jsonl
  millpond reserve -q jobs --wait 30s --lease 5m --json
  while msg=$(millpond reserve -q jobs --ack); do echo \"got $msg\"; done";

/// Arguments of `millpond reserve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: GroupArgs,

    /// How long a message stays reserved for this consumer (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_lease, default_value = "30s")]
    lease: Duration,

    /// Wait up to this long for a first message to become ready.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    wait: Duration,

    /// Most messages to reserve.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,

    /// Acknowledge the messages once printed: consume them in one step.
    #[arg(long)]
    ack: bool,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond reserve`.
///
/// # Errors
///
/// No such store or queue; the engine's errors; a failed write of the
/// output. The messages this command reserved are released on an error.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let result = reserve_in(&store, &args);
    // A clean close keeps the leases for a later `millpond ack`.
    open::close_after(store, result)
}

/// A delivery and when its lease ends (unix ms), as near as the command
/// knows: the engine sets the deadline from its clock as it reserves.
struct Taken {
    delivery: Delivery,
    lease_until_ms: u64,
}

fn reserve_in(store: &Store, args: &Args) -> Result<Outcome, Error> {
    let queue = open::queue(store, &args.target.queue)?;
    if !queue.group_names().contains(&args.target.group) {
        tracing::info!(
            "creating group {:?} of queue {:?}, starting at its oldest message",
            args.target.group,
            queue.name()
        );
    }
    let group = queue.group(&args.target.group)?;
    let mut taken = Vec::with_capacity((args.count as usize).min(1024));
    if let Err(e) = take(&group, args, &mut taken) {
        release(&group, &taken);
        return Err(e);
    }
    if taken.is_empty() {
        eprintln!(
            "no message ready in queue {:?} for group {:?}",
            args.target.queue, args.target.group
        );
        return Ok(Outcome::Empty);
    }
    if let Err(e) = print(&taken, args) {
        release(&group, &taken);
        return Err(error(format!(
            "could not write the messages to stdout ({e}); they were not acknowledged \
             and will be delivered again"
        )));
    }
    if args.ack {
        let ids: Vec<u64> = taken.iter().map(|t| t.delivery.id).collect();
        group.ack_batch(&ids)?;
    }
    Ok(Outcome::Success)
}

/// Reserves up to `--count` messages into `taken`, the first waiting up to
/// `--wait`. On an error, `taken` holds what was reserved before it.
fn take(group: &Group, args: &Args, taken: &mut Vec<Taken>) -> Result<(), Error> {
    let lease_ms = duration::ms(args.lease);
    if !args.wait.is_zero() {
        let Some(delivery) = group.reserve_timeout(args.lease, args.wait)? else {
            return Ok(());
        };
        // Reserved at some point of the wait: ask the group when (a failed
        // look leaves the latest the lease may end).
        let reserved_until = group
            .peek(delivery.id)
            .ok()
            .flatten()
            .and_then(|p| match p.state {
                MessageState::Reserved(t) => Some(t),
                _ => None,
            });
        let lease_until_ms =
            reserved_until.unwrap_or_else(|| output::now_ms().saturating_add(lease_ms));
        taken.push(Taken {
            delivery,
            lease_until_ms,
        });
    }
    // The rest in batches: one journal record for a run of fresh messages,
    // not one each. A batch cut short by an error hands out what it
    // reserved and the error comes with the next call, so the loop asks
    // again until the count is reached or nothing is left.
    while taken.len() < args.count as usize {
        let before = output::now_ms();
        let batch = group.reserve_batch(args.count as usize - taken.len(), args.lease)?;
        if batch.is_empty() {
            break;
        }
        taken.extend(batch.into_iter().map(|delivery| Taken {
            delivery,
            lease_until_ms: before.saturating_add(lease_ms),
        }));
    }
    Ok(())
}

/// Releases the messages this command reserved but did not hand out, for
/// another delivery at once (their attempt stays counted).
fn release(group: &Group, taken: &[Taken]) {
    for t in taken {
        if let Err(e) = group.nack(t.delivery.id, Some(Duration::ZERO)) {
            tracing::warn!(
                "could not release message {} ({e}); it is delivered again when its lease ends",
                t.delivery.id
            );
        }
    }
}

fn print(taken: &[Taken], args: &Args) -> Result<(), Error> {
    let last_attempt = GroupOptions::default().max_attempts;
    let mut out = std::io::stdout().lock();
    for Taken {
        delivery: d,
        lease_until_ms,
    } in taken
    {
        if args.json.json {
            let mut m = Map::new();
            m.insert("id".into(), d.id.into());
            m.insert("attempt".into(), d.attempt.into());
            m.insert("priority".into(), d.priority.into());
            m.insert("enqueued_ms".into(), d.enqueued_ms.into());
            m.insert("size".into(), d.payload.len().into());
            output::put_payload(&mut m, &d.payload);
            if !args.ack {
                m.insert("held_until_ms".into(), (*lease_until_ms).into());
            }
            serde_json::to_writer(&mut out, &Value::Object(m))?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(&d.payload)?;
            out.write_all(b"\n")?;
            if !args.ack {
                eprintln!(
                    "reserved id {} (attempt {}) for {}: settle it with `millpond ack -q {} -g {} {}`",
                    d.id,
                    d.attempt,
                    duration::display(args.lease),
                    args.target.queue,
                    args.target.group,
                    d.id
                );
            }
        }
        if !args.ack && d.attempt >= last_attempt {
            eprintln!(
                "id {} is on its last attempt ({last_attempt}): if its lease ends unsettled it is \
                 buried, and `millpond kick --id {}` revives it",
                d.id, d.id
            );
        }
    }
    out.flush()?;
    Ok(())
}
