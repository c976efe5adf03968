#!/usr/bin/env bash
# Side-by-side server benchmark: `millpond serve` against beanstalkd and
# Redis, on loopback, one server at a time, each with its data in a fresh
# temporary directory, all driven by the same native load generator
# (`millpond bench --server`).
#
# Usage: benches/servers.sh [--quick] [--duration D] [--rss-jobs N]
#                           [--pipeline DEPTH] [--no-build] [--no-rss]
#   --quick       1 s per measurement and 200,000 jobs for RSS (about 3 min)
#   --duration D  seconds per measurement (default 3)
#   --rss-jobs N  ready 100-byte jobs to hold for the RSS row (default 2,000,000)
#   --pipeline D  depth of the pipelined rows (default 16)
#   --no-build    use the millpond binary already built (or $MILLPOND)
#   --no-rss      skip the RSS measurement
#   --only TEXT   only the systems whose name contains TEXT (e.g. redis)
#   --priority N  priority of beanstalk-protocol puts (default 1024, the
#                 default of pheanstalk)
#
# MILLPOND_SERVE_FLAGS adds flags to `millpond serve` (e.g. "--threads 1").
#
# Needs: beanstalkd, redis-server, jq, python3, cargo; nats-server for the
# NATS rows (skipped without it). Prints a table per
# workload with ops/s, the ratio millpond / this system at comparable
# durability, latency, and server and client CPU per operation; then the
# bars of issue #7. Raw results (JSON lines) go to $OUT (default
# target/servers-bench.jsonl). Every server it starts is stopped on exit.
#
# Durability classes compared with each other:
#   fsync before the reply: millpond --durability sync, beanstalkd -f 0,
#                           Redis appendfsync always
#   fsync on a timer:       millpond --durability interval:50ms, beanstalkd
#                           (default -f 50), Redis appendfsync everysec, and
#                           NATS JetStream (Debian's nats-server 2.9.10 never
#                           fsyncs its file store: it sits beside these rows,
#                           and is weaker than all of them)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=3
RSS_JOBS=2000000
PIPELINE=16
BUILD=1
RSS=1
CLIENT_COUNTS="1 8 64"
ONLY=
PRIORITY=1024
SIZE=100
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=1; RSS_JOBS=200000 ;;
        --duration) DURATION=$2; shift ;;
        --rss-jobs) RSS_JOBS=$2; shift ;;
        --pipeline) PIPELINE=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-rss) RSS=0 ;;
        --only) ONLY=$2; shift ;;
        --priority) PRIORITY=$2; shift ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

for tool in beanstalkd redis-server jq python3; do
    command -v "$tool" >/dev/null || { echo "servers.sh needs $tool" >&2; exit 2; }
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
    cargo build --release -p millpond-cli --bin millpond >&2
fi
BIN=${MILLPOND:-$TARGET/release/millpond}
[ -x "$BIN" ] || { echo "no millpond binary at $BIN" >&2; exit 2; }
OUT=${OUT:-$TARGET/servers-bench.jsonl}
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/millpond-servers.XXXXXX")
PIDS=()

# Stops a server: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    for pid in "${PIDS[@]}"; do
        stop "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port (not a default one: 11300, 6379, 4222 are never
# tried, the range starts above them).
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "server $pid exited before it listened" >&2; return 1; }
        sleep 0.05
    done
    echo "server $pid did not listen on $port" >&2
    return 1
}

# The server started last: its pid, address and name.
SERVER_PID=
SERVER_ADDR=

start_millpond() {
    local durability=$1 dir=$WORK/millpond-$RANDOM
    mkdir -p "$dir"
    # shellcheck disable=SC2086 # extra flags split on purpose
    "$BIN" --store "$dir/store" serve --addr 127.0.0.1:0 --durability "$durability" \
        ${MILLPOND_SERVE_FLAGS:-} >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 300); do
        if grep -q '^listening on ' "$dir/stdout" 2>/dev/null; then
            SERVER_ADDR=$(sed -n 's/^listening on //p' "$dir/stdout" | head -n 1)
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/stderr" >&2; return 1; }
        sleep 0.05
    done
    echo "millpond serve did not print 'listening on'" >&2
    return 1
}

start_beanstalkd() {
    local dir=$WORK/beanstalkd-$RANDOM port
    mkdir -p "$dir"
    port=$(free_port)
    beanstalkd -l 127.0.0.1 -p "$port" -b "$dir" "$@" >"$dir/log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_ADDR=127.0.0.1:$port
    wait_port "$port" "$SERVER_PID"
}

start_nats() {
    local dir=$WORK/nats-$RANDOM port
    mkdir -p "$dir"
    port=$(free_port)
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir" >"$dir/log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_ADDR=127.0.0.1:$port
    wait_port "$port" "$SERVER_PID"
}

start_redis() {
    local fsync=$1 dir=$WORK/redis-$RANDOM port
    mkdir -p "$dir"
    port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
        --appendonly yes --appendfsync "$fsync" --daemonize no \
        >"$dir/log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_ADDR=127.0.0.1:$port
    wait_port "$port" "$SERVER_PID"
}

stop_server() {
    stop "$SERVER_PID"
    local kept=()
    for pid in "${PIDS[@]}"; do
        [ "$pid" = "$SERVER_PID" ] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# One measurement: appends a JSON line with the system's name and class.
measure() {
    local system=$1 class=$2 protocol=$3 workload=$4 clients=$5 pipeline=$6
    local queue=bench-$protocol
    "$BIN" bench --server "$SERVER_ADDR" --server-pid "$SERVER_PID" --protocol "$protocol" \
        --workload "$workload" --clients "$clients" --pipeline "$pipeline" \
        --duration "${DURATION}s" --size "$SIZE" --queue "$queue" --priority "$PRIORITY" --json |
        jq -c --arg system "$system" --arg class "$class" \
            '. + {system: $system, class: $class}' >>"$OUT"
    tail -n 1 "$OUT" | jq -r '"  \(.system) \(.workload) clients=\(.clients) pipeline=\(.pipeline): \(.ops_per_s | floor) ops/s"' >&2
}

# Every workload against the server started last.
measure_all() {
    local system=$1 class=$2 protocol=$3
    for clients in $CLIENT_COUNTS; do
        for pipeline in 1 "$PIPELINE"; do
            measure "$system" "$class" "$protocol" put "$clients" "$pipeline"
            measure "$system" "$class" "$protocol" reserve-delete "$clients" "$pipeline"
        done
    done
}

echo "== $(date -u +%FT%TZ) $(nproc) cores, ${DURATION}s per measurement, ${SIZE}-byte jobs, pipeline $PIPELINE, beanstalk priority $PRIORITY" >&2

want() { [[ -z $ONLY || $1 == *"$ONLY"* ]]; }

if want "millpond sync"; then
    echo "-- millpond serve --durability sync" >&2
    start_millpond sync
    measure_all "millpond sync" sync beanstalk
    stop_server
fi

if want "beanstalkd -f 0"; then
    echo "-- beanstalkd -f 0" >&2
    start_beanstalkd -f 0
    measure_all "beanstalkd -f 0" sync beanstalk
    stop_server
fi

if want "redis always"; then
    echo "-- redis appendfsync always" >&2
    start_redis always
    measure_all "redis list always" sync redis-list
    measure_all "redis stream always" sync redis-stream
    stop_server
fi

if want "millpond interval:50ms"; then
    echo "-- millpond serve --durability interval:50ms" >&2
    start_millpond interval:50ms
    measure_all "millpond interval:50ms" interval beanstalk
    stop_server
fi

if want "beanstalkd -f 50"; then
    echo "-- beanstalkd (default -f 50)" >&2
    start_beanstalkd
    measure_all "beanstalkd -f 50" interval beanstalk
    stop_server
fi

if want "redis everysec"; then
    echo "-- redis appendfsync everysec" >&2
    start_redis everysec
    measure_all "redis list everysec" interval redis-list
    measure_all "redis stream everysec" interval redis-stream
    stop_server
fi

if want "nats" && command -v nats-server >/dev/null; then
    echo "-- nats-server -js (file storage; 2.9.10 never fsyncs it)" >&2
    start_nats
    measure_all "nats jetstream (no fsync)" interval nats
    stop_server
fi

# Resident memory with many ready jobs.
RSS_OUT=$WORK/rss.tsv
: >"$RSS_OUT"
# VmRSS and RssAnon (without mapped file pages) in KiB.
rss_kib() { awk '/^(VmRSS|RssAnon):/ {printf "%s\t", $2}' "/proc/$1/status"; }
rss() {
    local system=$1 before after
    before=$(rss_kib "$SERVER_PID")
    "$BIN" bench --server "$SERVER_ADDR" --workload put --clients 8 --pipeline 64 \
        --count "$RSS_JOBS" --size "$SIZE" --queue bench --priority "$PRIORITY" --json >"$WORK/rss.json"
    sleep 1
    after=$(rss_kib "$SERVER_PID")
    printf '%s\t%s\t%s%s\n' "$system" "$RSS_JOBS" "$before" "$after" >>"$RSS_OUT"
    echo "  $system: VmRSS, RssAnon ${before% } KiB empty, ${after} KiB with $RSS_JOBS ready jobs" >&2
}
if [ "$RSS" = 1 ]; then
    echo "-- RSS with $RSS_JOBS ready jobs" >&2
    if want "millpond interval:50ms"; then
        start_millpond interval:50ms
        rss "millpond interval:50ms"
        stop_server
    fi
    if want "beanstalkd -f 50"; then
        start_beanstalkd
        rss "beanstalkd -f 50"
        stop_server
    fi
fi

python3 - "$OUT" "$RSS_OUT" "$PIPELINE" <<'PY'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1])]
rss = [line.rstrip("\n").split("\t") for line in open(sys.argv[2]) if line.strip()]
depth = int(sys.argv[3])
millpond = {"sync": "millpond sync", "interval": "millpond interval:50ms"}
by_key = {(r["system"], r["workload"], r["clients"], r["pipeline"]): r for r in rows}

def rate(system, workload, clients, pipeline):
    r = by_key.get((system, workload, clients, pipeline))
    return r["ops_per_s"] if r else None

def cpu(r, side):
    c = r.get(side)
    if not c:
        return "-"
    return f'{c["cpu_us_per_op"]:.1f} µs ({c["core_pct"]:.0f}%)'

for workload, title in [("put", "puts/s"), ("reserve-delete", "reserve+delete/s")]:
    for cls, name in [("sync", "fsync before the reply"), ("interval", "fsync on a timer")]:
        print(f"\n### {title}, {name}\n")
        print("| system | clients | pipeline | ops/s | millpond ÷ this | p50 | p99 | server CPU/op (% core) | client CPU/op (% core) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["workload"] != workload or r["class"] != cls:
                continue
            ours = rate(millpond[cls], workload, r["clients"], r["pipeline"])
            ratio = f'{ours / r["ops_per_s"]:.2f}×' if ours and r["ops_per_s"] else "-"
            lat = r.get("latency_us") or {}
            p50 = f'{lat["p50"] / 1000:.2f} ms' if lat else "-"
            p99 = f'{lat["p99"] / 1000:.2f} ms' if lat else "-"
            print(f'| {r["system"]} | {r["clients"]} | {r["pipeline"]} | {r["ops_per_s"]:,.0f} | {ratio} | {p50} | {p99} | {cpu(r, "server_cpu")} | {cpu(r, "client_cpu")} |')

def bar(label, ours, theirs, need):
    if ours is None or theirs is None or theirs == 0:
        print(f"| {label} | - | - | - | ≥ {need}× | not measured |")
        return
    ratio = ours / theirs
    verdict = "met" if ratio >= need else "MISSED"
    print(f"| {label} | {ours:,.0f} | {theirs:,.0f} | {ratio:.2f}× | ≥ {need}× | {verdict} |")

print("\n### Bars of issue #7\n")
print("| bar | millpond ops/s | peer ops/s | ratio | needed | |")
print("|---|---:|---:|---:|---:|---|")
for workload in ["put", "reserve-delete"]:
    for p in [1, depth]:
        bar(f"{workload}, 64 clients, pipeline {p}: sync vs beanstalkd -f 0",
            rate("millpond sync", workload, 64, p), rate("beanstalkd -f 0", workload, 64, p), 5)
for workload in ["put", "reserve-delete"]:
    for p in [1, depth]:
        bar(f"{workload}, 64 clients, pipeline {p}: interval:50ms vs beanstalkd default",
            rate("millpond interval:50ms", workload, 64, p), rate("beanstalkd -f 50", workload, 64, p), 1.5)
bar(f"put, 8 clients, pipeline {depth}: sync vs Redis list AOF always",
    rate("millpond sync", "put", 8, depth), rate("redis list always", "put", 8, depth), 1)

if rss:
    print("\n### Resident memory with ready 100-byte jobs\n")
    print("| server | ready jobs | RSS empty | RSS full | growth per job | anonymous RSS full | anonymous growth per job |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for system, jobs, rss0, anon0, rss1, anon1 in (line[:6] for line in rss):
        jobs, rss0, anon0, rss1, anon1 = int(jobs), int(rss0), int(anon0), int(rss1), int(anon1)
        mib = lambda kib: f"{kib / 1024:.1f} MiB"
        per_job = lambda a, b: f"{(b - a) * 1024 / jobs:.1f} B"
        print(f"| {system} | {jobs:,} | {mib(rss0)} | {mib(rss1)} | {per_job(rss0, rss1)} | {mib(anon1)} | {per_job(anon0, anon1)} |")
PY
