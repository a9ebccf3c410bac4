#!/usr/bin/env bash
# Installs what Ember needs on Debian/Ubuntu and is missing: FUSE 3 (fusermount3, /dev/fuse
# helpers) and a C compiler for crates that build C. Rust >= 1.90 must already be installed
# (rustup); this script says so and stops if it is not.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
if ((${#need[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "install-deps: run as root (or with sudo) to install: ${need[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${need[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
	echo "install-deps: Rust is missing; install Rust >= 1.90 with rustup, then run this again." >&2
	exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if ((rustc_minor < 90)); then
	echo "install-deps: Rust 1.$rustc_minor is too old; Ember needs >= 1.90 (rustup update)." >&2
	exit 1
fi
if [[ ! -e /dev/fuse ]]; then
	modprobe fuse 2>/dev/null || true
fi
