#!/usr/bin/env bash
# The first command of the README: installs what is missing, builds the release binary and
# starts a single-node Ember (mgmtd, meta, storage as separate processes) mounted at MNT.
# Ctrl-C unmounts and stops everything; running it again brings the same file system back.
#
#   usage: sudo ./scripts/quickstart.sh [MNT] [DATA]     defaults: /mnt/ember /var/lib/ember
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/mnt/ember}
data=${2:-/var/lib/ember}
./scripts/install-deps.sh
cargo build --release --locked -p ember-cli
exec ./target/release/ember up --data "$data" --mount "$mnt"
