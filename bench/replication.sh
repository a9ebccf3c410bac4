#!/usr/bin/env bash
# Replication benchmark: fan-out versus chain (store-and-forward) mode on a 3-node cluster
# with chains of 3, every process on loopback. For each mode, interleaved over ROUNDS rounds:
# 4 KiB random writes at queue depth 1 and 16, 4 KiB random writes offered at a fixed RATE per
# second (open loop, up to 16 in flight), and 1 MiB sequential writes, each straight from the
# client library to storage (`ember admin bench`, no FUSE). Prints a median table with ratios
# fan-out / chain.
#
# Why a fixed rate: this VM's host stalls all its vCPUs for 10-20 ms in every 100 ms period once
# the VM issues more than roughly 5,000 fsyncs a second (see docs/benchmarks.md). A closed-loop
# run at depth 1 lets the faster mode cross that line and pay the stalls in its tail; at the same
# offered rate both modes do the same work per second and their latencies compare like for like.
#
#   usage: sudo bench/replication.sh [ROUNDS] [SECONDS]   (defaults 2 and 5; RATE, default 500)
#
# SEPARATE_FS=1 gives every storage node a file system of its own (a 2 GiB ext4 image on a
# loop device), as on separate machines: otherwise the three replicas share one file system
# and its journal, and fan-out's simultaneous fsyncs queue behind each other there.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
secs=${2:-5}
rate=${RATE:-500}
out=${OUT:-bench/results/replication-$(date +%Y%m%d-%H%M%S)}
base=${EMBER_BENCH_DATA:-/var/tmp/ember-bench-repl}
mkdir -p "$out"
cargo build --release --locked -p ember-cli >&2
ember=./target/release/ember

run_mode() { # mode round
	local mode=$1 r=$2 dir="$base/$1-$2"
	rm -rf "$dir"
	mkdir -p "$dir"
	if [[ ${SEPARATE_FS:-0} == 1 ]]; then
		for node in storage storage1 storage2; do
			truncate -s 2G "$dir/$node.img"
			mkfs.ext4 -q -F "$dir/$node.img"
			mkdir -p "$dir/data/$node"
			mount -o loop "$dir/$node.img" "$dir/data/$node"
		done
	fi
	$ember up --any-port --storage-nodes 3 --replicas 3 --targets 1 --replication-mode "$mode" \
		--data "$dir/data" --mount "$dir/mnt" >"$dir/up.log" 2>&1 &
	local up=$!
	for _ in $(seq 1 600); do mountpoint -q "$dir/mnt" && break; sleep 0.1; done
	mountpoint -q "$dir/mnt" || { echo "ember did not start; see $dir/up.log" >&2; kill "$up"; return 1; }
	local mgmtd
	mgmtd=$(cat "$dir/data/mgmtd/mgmtd.addr")
	for spec in "qd1:--depth 1" "qd16:--depth 16" "rate:--depth 16 --rate $rate" "seq1m:--size 1048576 --sequential"; do
		local name=${spec%%:*}
		# shellcheck disable=SC2086
		echo "$mode $name $($ember admin --mgmtd "$mgmtd" --json bench --seconds "$secs" ${spec#*:})" >>"$out/raw.txt"
	done
	kill -TERM "$up"
	wait "$up" || true
	if [[ ${SEPARATE_FS:-0} == 1 ]]; then
		for node in storage storage1 storage2; do umount "$dir/data/$node"; done
	fi
	rm -rf "$dir"
}

echo "uptime before: $(uptime)  SEPARATE_FS=${SEPARATE_FS:-0}" | tee "$out/uptime.txt" >&2
for r in $(seq 1 "$rounds"); do
	if ((r % 2)); then modes="fan-out chain"; else modes="chain fan-out"; fi
	for m in $modes; do
		echo "round $r: $m" >&2
		run_mode "$m" "$r"
	done
done
echo "uptime after: $(uptime)" | tee -a "$out/uptime.txt" >&2

python3 - "$out/raw.txt" <<'PY' | tee "$out/table.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, name, js = line.split(" ", 2)
    rows.setdefault((name, mode), []).append(json.loads(js))
def med(name, mode, key):
    return statistics.median(r[key] for r in rows[(name, mode)])
print("| workload | metric | fan-out | chain | fan-out / chain |")
print("|---|---|---:|---:|---:|")
for name, keys in (("qd1", ("p50_us", "p99_us", "iops")), ("qd16", ("p50_us", "p99_us", "iops")), ("rate", ("p50_us", "p99_us")), ("seq1m", ("mib_per_s",))):
    for k in keys:
        f, c = med(name, "fan-out", k), med(name, "chain", k)
        print(f"| {name} | {k} | {f:.0f} | {c:.0f} | {f / c:.2f} |")
PY
