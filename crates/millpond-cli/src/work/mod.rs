//! The work commands: push, reserve, settle (ack, nack, touch, bury), kick
//! and peek.
//!
//! A command line process ends right after `reserve`, and the message it
//! reserved is settled by a later process. That works through the engine's
//! own calls: every command closes the store cleanly
//! ([`crate::open::close_after`]), a clean close keeps unexpired leases in
//! the groups' checkpoints, so the next command opens the store with the
//! message still reserved and `Group::ack`, `nack`, `touch` and `bury`
//! accept it (see [`settle`]). A lease that ends unsettled, or one lost to a
//! crash of the process holding the store, releases the message with its
//! attempt counted, as in any consumer.

pub mod kick;
pub mod peek;
pub mod push;
pub mod reserve;
pub mod settle;

use millpond::{MessageState, Peeked};
use serde_json::{Map, Value};

use crate::output;

/// A peeked message as a JSON object.
pub fn peeked_json(p: &Peeked, now_ms: u64) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), p.id.into());
    let (state, until) = state_parts(p.state);
    m.insert("state".into(), state.into());
    if let Some(until) = until {
        m.insert("until_ms".into(), until.into());
        m.insert("remaining_ms".into(), until.saturating_sub(now_ms).into());
    }
    m.insert("attempts".into(), p.attempts.into());
    m.insert("priority".into(), p.priority.into());
    m.insert("enqueued_ms".into(), p.enqueued_ms.into());
    m.insert("size".into(), p.payload.len().into());
    output::put_payload(&mut m, &p.payload);
    Value::Object(m)
}

/// A state's name and, for delayed and reserved, until when.
pub fn state_parts(state: MessageState) -> (&'static str, Option<u64>) {
    match state {
        MessageState::Ready => ("ready", None),
        MessageState::Delayed(t) => ("delayed", Some(t)),
        MessageState::Reserved(t) => ("reserved", Some(t)),
        MessageState::Buried => ("buried", None),
    }
}

/// A state for people: `delayed (ready in 25 seconds)`, `reserved (lease
/// ends in 30 seconds)`.
pub fn state_text(state: MessageState, now_ms: u64) -> String {
    match state {
        MessageState::Reserved(t) => {
            format!("reserved (lease ends {})", output::relative(t, now_ms))
        }
        _ => match state_parts(state) {
            (name, Some(t)) => format!("{name} (ready {})", output::relative(t, now_ms)),
            (name, None) => name.to_owned(),
        },
    }
}
