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

step "tests and doctests"
cargo test --workspace --all-features --locked

step "docs (broken links denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --locked

step "each feature alone (cargo hack --each-feature)"
cargo hack check --each-feature --no-dev-deps

step "HTTP cache conformance (http-cache-tests against examples/cache_proxy.rs)"
bash scripts/conformance.sh

echo
echo "all checks passed"
