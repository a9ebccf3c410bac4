#!/usr/bin/env python3
"""Issue 5's benchmark targets, checked round by round on one results directory.

usage: bench/issue5-targets.py bench/results/NAME

Reads the per-round files run-fsbench.sh leaves (LABEL-ROUND.txt, one "label metric value
unit" line per metric) and prints, for every target whose two sides were measured in the same
round, the ratio of each round, their median and whether the median meets the target. Ratios
are only ever taken within one round: the peers and Ember ran minutes apart there.
"""

import re
import statistics
import sys
from pathlib import Path

# (what, numerator label, numerator metric, denominator label, denominator metric, at least)
TARGETS = [
    ("periodic create vs JuiceFS", "ember-periodic", "meta_create", "jfs-sqlite", "meta_create", 3.0),
    ("periodic create vs MooseFS", "ember-periodic", "meta_create", "moosefs", "meta_create", 1.2),
    ("periodic create vs passthrough", "ember-periodic", "meta_create", "passthrough", "meta_create", 0.8),
    ("periodic write4k vs JuiceFS", "ember-periodic", "meta_write4k", "jfs-sqlite", "meta_write4k", 3.0),
    ("periodic write4k vs MooseFS", "ember-periodic", "meta_write4k", "moosefs", "meta_write4k", 1.2),
    ("periodic read4k vs JuiceFS", "ember-periodic", "meta_read4k", "jfs-sqlite", "meta_read4k", 3.0),
    ("periodic read4k vs MooseFS", "ember-periodic", "meta_read4k", "moosefs", "meta_read4k", 1.2),
    ("periodic stat vs MooseFS", "ember-periodic", "meta_stat", "moosefs", "meta_stat", 1.0),
    ("periodic 4k randwrite vs JuiceFS", "ember-periodic", "randwrite_4k_j1_iops", "jfs-sqlite", "randwrite_4k_j1_iops", 10.0),
    ("sync create vs ext4 fsync'ed appends", "ember-sync", "meta_create", "ext4", "append_fsync_ops", 0.6),
    ("sync create, 4 processes vs 1", "ember-sync", "meta_create_mp", "ember-sync", "meta_create", 2.0),
]

# The sync create target compares with the disk's single-stream rate: one process appending.
SINGLE_STREAM = ("ext4", "append_fsync_ops")

LINE = re.compile(r"^(\S+) (\S+) ([0-9.]+)\b")
FILE = re.compile(r"^(.+)-(\d+)\.txt$")


def load(directory):
    """{round: {(label, metric): value}} from every LABEL-ROUND.txt in `directory`."""
    rounds = {}
    for path in sorted(Path(directory).glob("*-*.txt")):
        name = FILE.match(path.name)
        if not name:
            continue
        values = rounds.setdefault(int(name.group(2)), {})
        for line in path.read_text().splitlines():
            m = LINE.match(line)
            if m and m.group(1) == name.group(1):
                values[(m.group(1), m.group(2))] = float(m.group(3))
    return rounds


def append_procs(directory):
    """How many processes the append phase ran (config.txt of run-fsbench.sh), if known."""
    config = Path(directory, "config.txt")
    if not config.exists():
        return None
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "append_procs":
            return int(value)
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    rounds = load(sys.argv[1])
    if not rounds:
        sys.exit(f"no LABEL-ROUND.txt results in {sys.argv[1]}")
    procs = append_procs(sys.argv[1])
    print("| target | at least | per round | median | met |")
    print("|---|---:|---|---:|---|")
    missed = 0
    for what, nl, nm, dl, dm, least in TARGETS:
        if (dl, dm) == SINGLE_STREAM and procs != 1:
            if any((dl, dm) in values for values in rounds.values()):
                print(f"| {what} | {least:.1f}x | appends ran with {procs or 'unknown'} processes, "
                      "not one (FSBENCH_APPEND_PROCS=1) | | |")
            continue
        ratios = []
        for _, values in sorted(rounds.items()):
            num, den = values.get((nl, nm)), values.get((dl, dm))
            if num is not None and den:
                ratios.append(num / den)
        if not ratios:
            continue
        median = statistics.median(ratios)
        met = median >= least
        missed += not met
        per_round = " / ".join(f"{r:.2f}" for r in ratios)
        print(f"| {what} | {least:.1f}x | {per_round} | {median:.2f}x | {'yes' if met else 'NO'} |")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
