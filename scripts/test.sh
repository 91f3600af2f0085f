#!/usr/bin/env bash
# The project's test command: everything CI checks, runnable on a fresh machine.
# It installs what the checks need (cargo-hack; Node for the cache conformance
# suite) and says so as it goes.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if ! cargo hack --version >/dev/null 2>&1; then
    echo "cargo-hack is missing: installing it (cargo install cargo-hack --locked)"
    cargo install cargo-hack --locked
fi
cargo hack --version

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (clippy, warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "private redis-server for the shared cache tier tests (tests/cache_redis.rs)"
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is missing: installing Debian's redis-server package"
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq redis-server
fi
redis-server --version
REDIS_DIR="$(mktemp -d)"
REDIS_PID=""
stop_redis() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
    rm -rf "$REDIS_DIR"
}
trap stop_redis EXIT
# A free loopback port: the first one nothing answers on and the server takes.
for port in $(shuf -i 20000-60000 -n 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        continue
    fi
    redis-server --port "$port" --bind 127.0.0.1 --dir "$REDIS_DIR" --save "" \
        --appendonly no --logfile "$REDIS_DIR/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 50); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            break 2
        fi
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
done
if [ -z "$REDIS_PID" ]; then
    echo "could not start a private redis-server" >&2
    exit 1
fi
export TOWER_PERF_REDIS_URL="redis://127.0.0.1:$port/"
echo "redis-server (pid $REDIS_PID) at $TOWER_PERF_REDIS_URL"

step "tests and doctests"
cargo test --workspace --all-features --locked
stop_redis

step "docs (broken links denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --locked

step "each feature alone, warnings denied (cargo hack --each-feature)"
cargo hack clippy --each-feature --no-dev-deps -- -D warnings

step "HTTP cache conformance (http-cache-tests against examples/cache_proxy.rs)"
bash scripts/conformance.sh

echo
echo "all checks passed"
