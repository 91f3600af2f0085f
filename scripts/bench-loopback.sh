#!/usr/bin/env bash
# Loopback benchmark: the bare app, the app wrapped by tower-perf's layers and
# by the peer crates that do the same jobs, side by side in one run, with
# ratios against bare. Builds in release, runs, and writes the Markdown report
# to bench-results/loopback.md (or --out PATH).
#
#   bash scripts/bench-loopback.sh                      # the full run (a few minutes)
#   bash scripts/bench-loopback.sh --duration 1 --rounds 1 --jobs hit-1k
#   bash scripts/bench-loopback.sh --help               # every option
#
# All traffic stays on 127.0.0.1; every run is bounded in time and requests.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench-results/loopback.md"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

cargo build --release --locked -p tower-perf-bench --bin loopback
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
exec "$target_dir/release/loopback" --out "$out" "${args[@]+"${args[@]}"}"
