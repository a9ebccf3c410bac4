#!/usr/bin/env bash
# The second command of the README: the whole test suite. FUSE tests need root and
# /dev/fuse; with CI set they fail instead of skipping when either is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
