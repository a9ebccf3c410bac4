#!/usr/bin/env bash
# Runs the shared fsbench kit against Ember mounts and the FUSE passthrough floor (and any
# other mounted peers named in PEERS), interleaved round by round in one time window, then
# prints the median table. Everything stays on loopback; one Ember cluster per metadata
# durability mode is started here with `ember up` (release build) and stopped at the end.
#
#   usage: sudo bench/run-fsbench.sh [ROUNDS]        (default 2)
#   env:   PHASES      fsbench phases            (default "meta tree append")
#          PEERS       peer names under /mnt/peers to include (default "passthrough"); "ext4" is
#                      no peer but /var/tmp/fsbench-ext4 on the backing disk, for the disk's own rates
#          DURABILITY  Ember metadata durability modes, one cluster each (default "sync periodic");
#                      labelled ember-sync, ember-periodic
#          SEPARATE_META  1: one more cluster per mode with meta as a process of its own
#                      (`ember up --separate-meta`), labelled ember-sync-separate and so on
#          DEV_FUSE    1: one more cluster per mode whose mount reads /dev/fuse instead of FUSE
#                      over io_uring (`ember up --no-io-uring`), labelled ember-sync-devfuse ...
#          OUT         results directory         (default bench/results/<timestamp>)
#   Prints the median table (OUT/table.md), then issue 5's targets round by round
#   (OUT/targets.md, from bench/issue5-targets.py).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
phases=${PHASES:-meta tree append}
peers=${PEERS:-passthrough}
kit=${FSBENCH_KIT:-../shared/bench}
out=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
data=${EMBER_BENCH_DATA:-/var/tmp/ember-bench}
mnt=${EMBER_BENCH_MNT:-/mnt/ember-bench}

[[ -x $kit/fsbench.sh || -f $kit/fsbench.sh ]] || { echo "fsbench kit not found at $kit" >&2; exit 2; }
mkdir -p "$out"
cargo build --release --locked -p ember-cli >&2

peer_dir() { if [[ $1 == ext4 ]]; then echo /var/tmp/fsbench-ext4; else echo "/mnt/peers/$1"; fi; }
for p in $peers; do
	if [[ $p == ext4 ]]; then mkdir -p "$(peer_dir "$p")"; continue; fi
	mountpoint -q "/mnt/peers/$p" || bash "$kit/start-peers.sh" start "$p" >&2
done

modes=${DURABILITY:-sync periodic}
# One cluster per label: "<mode>" has meta in the mount process (the default of `ember up`),
# "<mode>-separate" runs it as a process of its own, "<mode>-devfuse" mounts without io_uring.
clusters=()
for m in $modes; do
	clusters+=("$m")
	[[ ${SEPARATE_META:-0} == 1 ]] && clusters+=("$m-separate")
	[[ ${DEV_FUSE:-0} == 1 ]] && clusters+=("$m-devfuse")
done
rm -rf "$data"
up_pids=()
stop_ember() {
	for pid in "${up_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${up_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_ember EXIT
for c in "${clusters[@]}"; do
	layout=()
	[[ $c == *-separate ]] && layout=(--separate-meta)
	[[ $c == *-devfuse ]] && layout=(--no-io-uring)
	mkdir -p "$data/$c" "$mnt-$c"
	./target/release/ember up --any-port "${layout[@]}" --meta-durability "${c%%-*}" \
		--data "$data/$c/cluster" --mount "$mnt-$c" >"$data/$c/up.log" 2>&1 &
	up_pids+=($!)
done
for c in "${clusters[@]}"; do
	for _ in $(seq 1 600); do mountpoint -q "$mnt-$c" && break; sleep 0.1; done
	mountpoint -q "$mnt-$c" || { echo "ember ($c) did not mount; see $data/$c/up.log" >&2; exit 1; }
done

echo "uptime before: $(uptime)" | tee "$out/uptime.txt" >&2
# What bench/issue5-targets.py needs to know of how the rounds ran.
printf 'rounds=%s\nphases=%s\npeers=%s\ndurability=%s\nappend_procs=%s\nmeta_procs=%s\n' \
	"$rounds" "$phases" "$peers" "$modes" "${FSBENCH_APPEND_PROCS:-4}" "${FSBENCH_META_PROCS:-4}" >"$out/config.txt"
targets=()
for p in $peers; do targets+=("$p=$(peer_dir "$p")"); done
for c in "${clusters[@]}"; do targets+=("ember-$c=$mnt-$c"); done
for r in $(seq 1 "$rounds"); do
	order=("${targets[@]}")
	# Alternate the order every round so neither side always runs on a warmer machine.
	if ((r % 2 == 0)); then
		order=()
		for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
	fi
	for t in "${order[@]}"; do
		label=${t%%=*}
		echo "round $r: $label" >&2
		FSBENCH_PHASES="$phases" bash "$kit/fsbench.sh" "${t#*=}" "$label" >"$out/$label-$r.txt"
	done
	echo "uptime after round $r: $(uptime)" | tee -a "$out/uptime.txt" >&2
done
files=()
for t in "${targets[@]}"; do files+=("$out/${t%%=*}"-[0-9]*.txt); done
python3 "$kit/fsbench-table.py" --median "${files[@]}" | tee "$out/table.md"
# Issue 5's targets per round; a missed one is reported here, not as the run's failure.
python3 bench/issue5-targets.py "$out" | tee "$out/targets.md" || true
