#!/usr/bin/env bash
# Space of many small files: writes N files of SIZE random bytes through a fresh single-node
# `ember up` (release build, periodic metadata durability), then reports what the storage
# targets and meta's KV hold, against the logical size:
#   - blocks + tails: the bytes the targets account for live data (`ember admin targets`);
#   - du: the target and meta directories on disk (`du -sk`, after a sync and a short settle),
#     which also counts what has not been compacted or trimmed yet (journals, growth steps).
#
#   usage: sudo bench/space-small-files.sh [N] [SIZE]      (default 10000 files of 5120 bytes)
#   env:   EMBER_BENCH_DATA  state directory   (default /var/tmp/ember-space)
#          EMBER_BENCH_MNT   mount point       (default /mnt/ember-space)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
size=${2:-5120}
data=${EMBER_BENCH_DATA:-/var/tmp/ember-space}
mnt=${EMBER_BENCH_MNT:-/mnt/ember-space}
bin=target/release/ember

cargo build --release --locked -p ember-cli >&2
rm -rf "$data"
mkdir -p "$data" "$mnt"
"$bin" up --any-port --meta-durability periodic --data "$data" --mount "$mnt" >"$data.log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null || true; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 300); do mountpoint -q "$mnt" && break; sleep 0.1; done
mountpoint -q "$mnt" || { echo "mount did not come up; see $data.log" >&2; exit 1; }

kib() { du -sk "$1" | cut -f1; }
sync
storage_before=$(kib "$data/storage")
meta_before=$(kib "$data/meta")
python3 - "$mnt/small" "$n" "$size" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, "d%02d" % (i % 10))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(os.urandom(size))
PY
sync
sleep 3
storage_kib=$(( $(kib "$data/storage") - storage_before ))
meta_kib=$(( $(kib "$data/meta") - meta_before ))
mgmtd=$(cat "$data/mgmtd/mgmtd.addr")
used=$("$bin" admin --mgmtd "$mgmtd" --json targets | python3 -c 'import json,sys; print(sum(t["used_bytes"] for t in json.load(sys.stdin)))')
logical=$(( n * size ))
uptime
python3 - "$logical" "$used" "$storage_kib" "$meta_kib" <<'PY'
import sys
logical, used, storage_kib, meta_kib = map(int, sys.argv[1:])
meta = meta_kib * 1024
print("logical bytes              %12d" % logical)
print("targets: blocks + tails    %12d" % used)
print("meta KV (du growth)        %12d" % meta)
print("blocks + tails + meta KV   %12d  = %.2fx logical" % (used + meta, (used + meta) / logical))
print("du growth, storage + meta  %12d  = %.2fx logical" % (storage_kib * 1024 + meta, (storage_kib * 1024 + meta) / logical))
PY
