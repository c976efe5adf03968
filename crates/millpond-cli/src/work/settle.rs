//! `millpond ack`, `nack`, `touch` and `bury`: settle messages that an
//! earlier `millpond reserve` leased, through the engine's
//! [`Group::ack_batch`], [`Group::nack`], [`Group::touch`] and
//! [`Group::bury`].
//!
//! A lease outlives the command that took it: every command ends with
//! [`Store::close`], and a clean close keeps unexpired leases, so a message
//! `reserve` leased is still reserved when a later command opens the store,
//! until its lease ends (see [the module above](super)).
//!
//! Every id is first checked with [`Group::peek`]: if any is not reserved,
//! nothing is settled and the error says where each such message is
//! instead (exit code 2).

use std::io::Write;
use std::time::Duration;

use millpond::{Durability, Group, MessageState, Store};
use serde_json::{Value, json};

use crate::args::{GroupArgs, JsonArg, parse_duration, parse_lease};
use crate::failure::{Error, error};
use crate::work::state_parts;
use crate::{Global, Outcome, open, output};

pub const HELP_ACK: &str = "\
Acknowledges messages reserved by `millpond reserve` (their lease still
running): they are never delivered to this group again. If any id is not
reserved, nothing is acknowledged and the error says where it is instead
(exit code 2).

Output: a line per id; with --json
  {\"queue\": \"jobs\", \"group\": \"default\", \"action\": \"ack\",
   \"messages\": [{\"id\": 7, \"state\": \"finished\"}]}

Examples:
  millpond ack -q jobs 7
  millpond reserve -q jobs --json | jq .id | xargs millpond ack -q jobs";

pub const HELP_NACK: &str = "\
Releases reserved messages for a retry: ready after --delay, or after the
group's backoff (1 s doubling per attempt, at most 5 min, ±20 %) without
it. A message out of attempts (10) is buried instead. If any id is not
reserved, nothing is released (exit code 2).

Examples:
  millpond nack -q jobs 7                  retry after the backoff
  millpond nack -q jobs --delay 0 7 8      retry now";

pub const HELP_TOUCH: &str = "\
Extends the lease of reserved messages to --lease from now, for a consumer
that needs more time. If any id is not reserved (its lease ran out, say),
nothing is extended (exit code 2).

Examples:
  millpond touch -q jobs --lease 10m 7";

pub const HELP_BURY: &str = "\
Buries reserved messages: they stay in the group, out of the way, until
`millpond kick` revives them. See them with `millpond peek --buried`. If any
id is not reserved, nothing is buried (exit code 2).

Examples:
  millpond bury -q jobs 7";

/// Arguments of `millpond ack`.
#[derive(Debug, clap::Args)]
pub struct AckArgs {
    /// Ids of the messages.
    #[arg(required = true, num_args = 1..)]
    ids: Vec<u64>,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `millpond nack`.
#[derive(Debug, clap::Args)]
pub struct NackArgs {
    /// Ids of the messages.
    #[arg(required = true, num_args = 1..)]
    ids: Vec<u64>,

    /// Retry after this delay (0: at once) instead of the group's backoff.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `millpond touch`.
#[derive(Debug, clap::Args)]
pub struct TouchArgs {
    /// Ids of the messages.
    #[arg(required = true, num_args = 1..)]
    ids: Vec<u64>,

    /// The new lease, from now.
    #[arg(long, value_parser = parse_lease, default_value = "30s")]
    lease: Duration,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `millpond bury`.
#[derive(Debug, clap::Args)]
pub struct BuryArgs {
    /// Ids of the messages.
    #[arg(required = true, num_args = 1..)]
    ids: Vec<u64>,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// What to do with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    /// Retry after this delay, or after the backoff.
    Nack(Option<Duration>),
    /// A new lease, from now.
    Touch(Duration),
    Bury,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Ack => "ack",
            Action::Nack(_) => "nack",
            Action::Touch(_) => "touch",
            Action::Bury => "bury",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Ack => "acked",
            Action::Nack(_) => "nacked",
            Action::Touch(_) => "touched",
            Action::Bury => "buried",
        }
    }
}

/// Runs `millpond ack`.
///
/// # Errors
///
/// See [`settle`].
pub fn ack(global: &Global, args: AckArgs) -> Result<Outcome, Error> {
    settle(global, &args.target, &args.ids, Action::Ack, args.json.json)
}

/// Runs `millpond nack`.
///
/// # Errors
///
/// See [`settle`].
pub fn nack(global: &Global, args: NackArgs) -> Result<Outcome, Error> {
    settle(
        global,
        &args.target,
        &args.ids,
        Action::Nack(args.delay),
        args.json.json,
    )
}

/// Runs `millpond touch`.
///
/// # Errors
///
/// See [`settle`].
pub fn touch(global: &Global, args: TouchArgs) -> Result<Outcome, Error> {
    settle(
        global,
        &args.target,
        &args.ids,
        Action::Touch(args.lease),
        args.json.json,
    )
}

/// Runs `millpond bury`.
///
/// # Errors
///
/// See [`settle`].
pub fn bury(global: &Global, args: BuryArgs) -> Result<Outcome, Error> {
    settle(
        global,
        &args.target,
        &args.ids,
        Action::Bury,
        args.json.json,
    )
}

/// Why message `id` cannot be settled, given its state and attempts
/// (`None`: finished or unknown); `None` if it is reserved.
fn not_reserved(
    id: u64,
    found: Option<(MessageState, u32)>,
    group: &str,
    now_ms: u64,
) -> Option<String> {
    let not = format!("message {id} is not reserved in group {group:?}");
    let Some((state, attempts)) = found else {
        return Some(format!(
            "{not}: it was acknowledged already, or never pushed"
        ));
    };
    Some(match state {
        MessageState::Reserved(_) => return None,
        MessageState::Ready if attempts == 0 => {
            format!("{not}: it is ready and was never delivered; `millpond reserve` takes it")
        }
        MessageState::Ready => format!(
            "{not}: its lease ran out and it is ready again (delivered {} so far); \
             `millpond reserve` takes it again",
            output::plural(u64::from(attempts), "time")
        ),
        MessageState::Delayed(t) => format!(
            "{not}: it is delayed (nacked, or pushed with a delay), ready {}",
            output::relative(t, now_ms)
        ),
        MessageState::Buried => {
            format!("{not}: it is buried; `millpond kick --id {id}` revives it")
        }
    })
}

/// Settles `ids` in the store, closing it cleanly whatever happens, and
/// prints where each message is now.
///
/// # Errors
///
/// No such store, queue or group; an id that is not reserved (nothing is
/// settled then); the engine's errors.
fn settle(
    global: &Global,
    target: &GroupArgs,
    ids: &[u64],
    action: Action,
    json: bool,
) -> Result<Outcome, Error> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();

    let store = open::existing(&global.store, Durability::Buffered)?;
    let result = settle_in(&store, target, &ids, action);
    // The close makes the settles durable and keeps the leases of the
    // messages still reserved (touched ones with their new deadline).
    let results = open::close_after(store, result)?;
    print(&results, target, action, json)?;
    Ok(Outcome::Success)
}

/// Checks every id, settles them, and returns where each message is now
/// (`None`: finished).
fn settle_in(
    store: &Store,
    target: &GroupArgs,
    ids: &[u64],
    action: Action,
) -> Result<Vec<(u64, Option<MessageState>)>, Error> {
    let queue = open::queue(store, &target.queue)?;
    let group = open::group(&queue, &target.group)?;

    let now = output::now_ms();
    let mut refused = Vec::new();
    for &id in ids {
        let found = group.peek(id)?.map(|p| (p.state, p.attempts));
        if let Some(why) = not_reserved(id, found, &target.group, now) {
            refused.push(why);
        }
    }
    if !refused.is_empty() {
        return Err(error(format!(
            "nothing was {}: {}",
            action.past(),
            refused.join("; ")
        )));
    }

    apply(&group, ids, action)?;

    let mut results = Vec::with_capacity(ids.len());
    for &id in ids {
        match group.peek(id) {
            Ok(peeked) => results.push((id, peeked.map(|p| p.state))),
            Err(e) => {
                // Settled all the same; say so before the error.
                eprintln!("{} {}", action.past(), id_list(ids));
                return Err(e.into());
            }
        }
    }
    Ok(results)
}

/// `3, 5, 8`.
fn id_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    ids.join(", ")
}

/// Settles every id (all checked to be reserved just before).
fn apply(group: &Group, ids: &[u64], action: Action) -> Result<(), Error> {
    if action == Action::Ack {
        // One commit; refused whole if any id is not reserved.
        return group.ack_batch(ids).map_err(|e| explain(e, &[], action));
    }
    for (done, &id) in ids.iter().enumerate() {
        let result = match action {
            Action::Nack(delay) => group.nack(id, delay),
            Action::Touch(lease) => group.touch(id, lease),
            Action::Bury => group.bury(id),
            Action::Ack => unreachable!("acked above"),
        };
        result.map_err(|e| explain(e, &ids[..done], action))?;
    }
    Ok(())
}

/// An engine error met while settling, after `done` were settled. A lease
/// that ran out between the check and the settle becomes a plain error
/// (exit code 2); other errors keep their type, and so their exit code.
fn explain(e: millpond::Error, done: &[u64], action: Action) -> Error {
    let done_text = if done.is_empty() {
        format!("nothing was {}", action.past())
    } else {
        format!("{} before it: {}", action.past(), id_list(done))
    };
    if let millpond::Error::NotReserved { .. } = e {
        return error(format!(
            "{e} (its lease ran out while this command ran); {done_text}"
        ));
    }
    if !done.is_empty() {
        eprintln!("{done_text}");
    }
    Box::new(e)
}

/// Prints where each message is after `action`.
fn print(
    results: &[(u64, Option<MessageState>)],
    target: &GroupArgs,
    action: Action,
    json: bool,
) -> Result<(), Error> {
    if json {
        let messages: Vec<Value> = results
            .iter()
            .map(|&(id, state)| match state {
                None => json!({"id": id, "state": "finished"}),
                Some(s) => {
                    let (name, until) = state_parts(s);
                    json!({"id": id, "state": name, "until_ms": until})
                }
            })
            .collect();
        output::json_document(&json!({
            "queue": target.queue,
            "group": target.group,
            "action": action.name(),
            "messages": messages,
        }))?;
        return Ok(());
    }
    let now = output::now_ms();
    let past = action.past();
    let mut out = std::io::stdout().lock();
    for &(id, state) in results {
        match (action, state) {
            (Action::Ack | Action::Bury, _) | (_, None) => writeln!(out, "{past} {id}")?,
            (_, Some(MessageState::Buried)) => {
                writeln!(out, "{past} {id}: buried, out of attempts")?;
            }
            (_, Some(MessageState::Ready)) => writeln!(out, "{past} {id}: ready now")?,
            (_, Some(MessageState::Delayed(t) | MessageState::Reserved(t))) => writeln!(
                out,
                "{past} {id}: {} {} ({})",
                if matches!(action, Action::Touch(_)) {
                    "reserved until"
                } else {
                    "ready at"
                },
                output::iso_utc(t),
                output::relative(t, now)
            )?,
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reserved_messages_can_be_settled() {
        let now = 1_000_000;
        let why = |found| not_reserved(7, found, "g", now);
        assert_eq!(why(Some((MessageState::Reserved(now + 1), 1))), None);
        for (found, needle) in [
            (None, "acknowledged already, or never pushed"),
            (Some((MessageState::Ready, 0)), "never delivered"),
            (Some((MessageState::Ready, 2)), "lease ran out"),
            (Some((MessageState::Delayed(now + 5_000), 1)), "delayed"),
            (Some((MessageState::Buried, 1)), "kick --id 7"),
        ] {
            let text = why(found).expect("refused");
            assert!(
                text.starts_with(r#"message 7 is not reserved in group "g": "#),
                "{text}"
            );
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn a_lease_lost_mid_command_names_what_was_done() {
        let lost = || millpond::Error::NotReserved {
            group: "g".into(),
            id: 9,
        };
        let e = explain(lost(), &[3, 5], Action::Bury);
        let (code, text) = crate::failure::classify(&e);
        assert_eq!(code, crate::failure::EXIT_ERROR);
        assert!(text.contains("message 9 is not reserved"), "{text}");
        assert!(text.ends_with("buried before it: 3, 5"), "{text}");
        let e = explain(lost(), &[], Action::Ack);
        assert!(e.to_string().ends_with("nothing was acked"), "{e}");
        let corrupt = millpond::Error::Corruption {
            path: "/s/x".into(),
            offset: 1,
            detail: "bad".into(),
        };
        let e = explain(corrupt, &[], Action::Ack);
        assert_eq!(
            crate::failure::classify(&e).0,
            crate::failure::EXIT_DAMAGED,
            "keeps its exit code"
        );
    }
}
