//! `millpond kick`: revive buried messages, oldest first, or one buried or
//! delayed message by id.

use millpond::{Durability, Store};
use serde_json::json;

use crate::args::{GroupArgs, JsonArg};
use crate::failure::Error;
use crate::{Global, Outcome, open, output};

pub const HELP: &str = "\
Kicked messages are ready at once, their attempts counted from zero again.

Output: how many were kicked; with --json {\"kicked\": 3}.

Examples:
  millpond kick -q jobs 10        revive up to 10 buried messages
  millpond kick -q jobs --id 7    revive message 7 (buried or delayed)";

/// Arguments of `millpond kick`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many buried messages to revive, oldest first.
    #[arg(default_value_t = 1, conflicts_with = "id")]
    count: u64,

    /// Revive this message (buried or delayed) instead.
    #[arg(long)]
    id: Option<u64>,

    #[command(flatten)]
    target: GroupArgs,

    #[command(flatten)]
    json: JsonArg,
}

/// Runs `millpond kick`.
///
/// # Errors
///
/// No such store, queue or group; [`millpond::Error::NotBuried`] for an id
/// that is neither buried nor delayed; the engine's errors.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let store = open::existing(&global.store, Durability::Buffered)?;
    let result = kick_in(&store, &args);
    let kicked = open::close_after(store, result)?;
    if args.json.json {
        output::json_document(&json!({ "kicked": kicked }))?;
    } else {
        println!("kicked {}", output::plural(kicked, "message"));
    }
    Ok(Outcome::Success)
}

fn kick_in(store: &Store, args: &Args) -> Result<u64, Error> {
    let queue = open::queue(store, &args.target.queue)?;
    let group = open::group(&queue, &args.target.group)?;
    Ok(match args.id {
        Some(id) => {
            group.kick_id(id)?;
            1
        }
        None => group.kick(usize::try_from(args.count).unwrap_or(usize::MAX))? as u64,
    })
}
