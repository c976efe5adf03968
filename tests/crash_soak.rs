//! Real crash soak (guarantees 1, 2 and 3): worker processes push,
//! reserve, ack and nack under `Sync` with a consumer group and are killed
//! with SIGKILL at random moments, round after round on one store; after
//! each kill the store is reopened and checked (see `support/soak.rs` for
//! every check). 50 rounds here; `scripts/crash-soak.sh` runs long soaks.
//!
//! `MILLPOND_SOAK_ROUNDS` overrides the number of rounds,
//! `MILLPOND_SOAK_SEED` the seed.

use std::path::Path;

#[path = "support/kill_payload.rs"]
mod kill_payload;
#[path = "support/soak.rs"]
mod soak;

const ROUNDS_DEFAULT: u32 = 50;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

#[test]
fn sigkilled_workers_lose_no_acknowledged_push_and_redeliver_no_acked_message() {
    let rounds = env_or("MILLPOND_SOAK_ROUNDS", ROUNDS_DEFAULT);
    let seed = env_or("MILLPOND_SOAK_SEED", 0x736f_616b_u64);
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_millpond-soak-child"));
    let totals = soak::run(exe, dir.path(), rounds, seed, true)
        .unwrap_or_else(|e| panic!("crash soak (seed {seed}): {e}"));
    println!("{}", totals.line());
    assert_eq!(totals.rounds, rounds);
    // The soak exercised what it claims to.
    assert!(totals.pushes > 0 && totals.acks > 0, "{totals:?}");
    assert!(
        totals.messages_verified > 0 && totals.acks_verified > 0,
        "{totals:?}"
    );
    assert!(
        totals.redeliveries > 0,
        "no message was ever delivered twice: {totals:?}"
    );
    assert!(
        totals.killed_in_open < rounds / 2,
        "most kills should land after the open: {totals:?}"
    );
}
