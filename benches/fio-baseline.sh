#!/usr/bin/env bash
# fio baseline for millpond's benchmarks: the disk patterns of DESIGN.md's
# "What the disk here tells us" table, measured in a temporary directory on
# the same file system as the benchmarks' temp dirs ($TMPDIR, default /tmp),
# so that millpond's figures can be taken as ratios of fio's in one session.
#
# Usage: benches/fio-baseline.sh [runtime-seconds-per-job]   (default 8)
# Needs: fio, jq. Writes at most a few GiB under the temp dir, removes it.
#
# Rows (each a fresh file unless stated):
#   append4k_fdatasync   4 KiB pwrite appends (file grows) + fdatasync, 1 writer
#   append128_fdatasync  128 B appends + fdatasync (one millpond frame of a
#                        100-byte message is 128 B), 1 writer
#   append1m_fdatasync   1 MiB appends + fdatasync, buffered
#   append1m_direct      1 MiB appends + fdatasync, O_DIRECT
#   seqwrite_nosync      1 MiB buffered sequential write, no fsync
#   write100             100-byte write() syscalls, no fsync
#   read_warm            1 MiB sequential reads of a 1 GiB file in page cache
#   *_recycled           the same job right after a 2 GiB file was written
#                        and deleted: see "Page cache on this VM" below
#
# Page cache on this VM: the guest reports freed memory to the host
# (virtio-balloon free page reporting), and the host backs guest memory
# lazily, so filling page cache pages the guest has not used recently costs
# a host page fault each: buffered writes into a new file run at ~0.4 GB/s,
# but at several GB/s into pages freed a moment ago. Benchmarks that delete
# their stores and write again get the fast case; the *_recycled rows give
# fio the same conditions. On bare metal the two rows should agree.
set -euo pipefail

RUNTIME=${1:-8}
BASE=${TMPDIR:-/tmp}
command -v fio >/dev/null || { echo "fio not found (apt-get install fio)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found" >&2; exit 1; }

DIR=$(mktemp -d "$BASE/millpond-fio.XXXXXX")
trap 'rm -rf "$DIR"' EXIT

echo "# fio $(fio --version) in $DIR ($(df -h --output=source,fstype,size,avail "$DIR" | tail -1 | tr -s ' '))"
echo "# $(date -u +%FT%TZ)  nproc=$(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-22s %12s %12s %14s\n' job ops/s MB/s "mean-sync-us"

# run NAME [fio args...]: runs one job on a fresh file, prints one row.
run() {
    local name=$1
    shift
    local f="$DIR/$name.dat"
    rm -f "$f"
    local out
    out=$(fio --name="$name" --filename="$f" --ioengine=psync --numjobs=1 \
        --runtime="$RUNTIME" --output-format=json "$@")
    local iops bw sync
    iops=$(jq -r '.jobs[0] | (.write.iops + .read.iops) | floor' <<<"$out")
    bw=$(jq -r '.jobs[0] | ((.write.bw_bytes + .read.bw_bytes) / 1e6) | floor' <<<"$out")
    sync=$(jq -r '.jobs[0].sync.lat_ns.mean // 0 | (. / 1000) | floor' <<<"$out")
    printf '%-22s %12s %12s %14s\n' "$name" "$iops" "$bw" "$sync"
    rm -f "$f"
}

# Appends: the file starts empty and grows with every write (no layout, no
# fallocate), as a millpond segment does.
APPEND=(--rw=write --file_append=1 --fallocate=none --create_on_open=1)

run append4k_fdatasync "${APPEND[@]}" --bs=4k --size=1G --fdatasync=1
run append128_fdatasync "${APPEND[@]}" --bs=128 --size=256M --fdatasync=1
run append1m_fdatasync "${APPEND[@]}" --bs=1M --size=4G --fdatasync=1
run append1m_direct "${APPEND[@]}" --bs=1M --size=4G --fdatasync=1 --direct=1
run seqwrite_nosync "${APPEND[@]}" --bs=1M --size=2G --end_fsync=0
run write100 "${APPEND[@]}" --bs=100 --size=1G

# prime: write a 2 GiB file and delete it, leaving recently freed (host-
# backed) pages for the next job's page cache.
prime() {
    fio --name=prime --filename="$DIR/prime.dat" --rw=write --bs=1M --size=2G \
        --ioengine=psync --output-format=terse >/dev/null
    rm -f "$DIR/prime.dat"
}
prime
run append1m_fdatasync_recycled "${APPEND[@]}" --bs=1M --size=1G --fdatasync=1
prime
run seqwrite_nosync_recycled "${APPEND[@]}" --bs=1M --size=1G --end_fsync=0

# Warm sequential read: lay out 1 GiB, read it once to warm the page cache,
# then measure.
warm="$DIR/read_warm.dat"
fio --name=layout --filename="$warm" --rw=write --bs=1M --size=1G \
    --ioengine=psync --output-format=terse >/dev/null
fio --name=warmup --filename="$warm" --rw=read --bs=1M --size=1G \
    --ioengine=psync --invalidate=0 --output-format=terse >/dev/null
out=$(fio --name=read_warm --filename="$warm" --rw=read --bs=1M --size=1G \
    --ioengine=psync --invalidate=0 --loops=4 --runtime="$RUNTIME" --output-format=json)
printf '%-22s %12s %12s %14s\n' read_warm \
    "$(jq -r '.jobs[0].read.iops | floor' <<<"$out")" \
    "$(jq -r '.jobs[0].read.bw_bytes / 1e6 | floor' <<<"$out")" 0
