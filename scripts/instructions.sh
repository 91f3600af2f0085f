#!/usr/bin/env bash
# Instructions per request, by scenario, counted by callgrind (valgrind): a
# figure that does not move with the load on a shared machine. Each scenario
# runs N and 2N requests; the difference over N is one request's cost.
#
#   bash scripts/instructions.sh                  # every scenario, N = 2000
#   bash scripts/instructions.sh trivial-bare trivial-stack
#   N=4000 bash scripts/instructions.sh hit miss
#
# Needs valgrind (Debian: apt-get install valgrind). The scenarios are listed
# in perf/src/bin/instructions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "instructions: valgrind is needed (apt-get install valgrind)" >&2
    exit 2
fi
n="${N:-2000}"
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(bare hit miss pass trivial-bare trivial-cache trivial-coalesce
               trivial-limit trivial-latency trivial-stack)
fi

cargo build --release --locked -p tower-perf-bench --bin instructions
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/release/instructions"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Instructions counted in `measure` for `count` requests of scenario `$1`.
count() {
    valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect='instructions::measure' \
        --callgrind-out-file="$scratch/out" "$bin" "$1" "$2" >/dev/null 2>"$scratch/err" \
        || { cat "$scratch/err" >&2; exit 1; }
    callgrind_annotate "$scratch/out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 } END { print total }'
}

declare -A per_request
printf '%-18s %14s %14s\n' scenario "instr/request" "over its bare"
for s in "${scenarios[@]}"; do
    one=$(count "$s" "$n")
    two=$(count "$s" $((2 * n)))
    per_request[$s]=$(( (two - one) / n ))
    case "$s" in
        trivial-*) base=trivial-bare ;;
        *) base=bare ;;
    esac
    over=""
    if [ -n "${per_request[$base]:-}" ] && [ "$s" != "$base" ]; then
        over=$(( per_request[$s] - per_request[$base] ))
        [ "$over" -ge 0 ] && over="+$over"
    fi
    printf '%-18s %14s %14s\n' "$s" "${per_request[$s]}" "$over"
done
