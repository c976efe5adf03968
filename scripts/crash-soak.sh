#!/usr/bin/env bash
# Long crash soak outside CI: worker processes push, reserve, ack and nack
# under Sync with a consumer group and are SIGKILLed at random moments;
# after each kill the store is reopened and checked (tests/support/soak.rs
# lists every check). CI runs 50 rounds of the same driver in
# tests/crash_soak.rs.
#
#   scripts/crash-soak.sh [ROUNDS] [SEED]     (defaults: 1000 rounds, seed 1936679275)
#
# Builds the worker in release mode and prints one line per round and the
# totals; exits non-zero on the first broken guarantee. MILLPOND_SOAK_DIR
# keeps the store in that directory (it must not hold a store yet).
set -euo pipefail

cd "$(dirname "$0")/.."
rounds="${1:-1000}"
seed="${2:-1936679275}"

cargo build --release --bin millpond-soak-child
bin="${CARGO_TARGET_DIR:-target}/release/millpond-soak-child"
args=(soak --rounds "$rounds" --seed "$seed")
if [[ -n "${MILLPOND_SOAK_DIR:-}" ]]; then
    args+=(--dir "$MILLPOND_SOAK_DIR")
fi
exec "$bin" "${args[@]}"
