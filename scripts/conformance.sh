#!/usr/bin/env bash
# Runs the third-party HTTP cache conformance suite (the `http-cache-tests` npm
# package) against `examples/cache_proxy.rs`: a reverse proxy wrapped in
# `CacheLayer::new()` with its defaults.
#
# Prints required pass / fail / dependency-fail and optimal pass next to the
# published results the package ships, and fails on any required test that
# fails and is not listed, with its reason, in conformance/known-failures.txt.
#
# Environment: ORIGIN_PORT (default 8000), PROXY_PORT (default 8010).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE_VERSION=0.4.5
ORIGIN_PORT=${ORIGIN_PORT:-8000}
PROXY_PORT=${PROXY_PORT:-8010}
WORK=conformance/work
SUITE="$WORK/node_modules/http-cache-tests"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js and npm are needed for the cache conformance suite: installing Debian's nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi

if [ "$(node -p "try{require('./$SUITE/package.json').version}catch(e){''}")" != "$SUITE_VERSION" ]; then
    echo "installing http-cache-tests@$SUITE_VERSION from npm into $WORK"
    mkdir -p "$WORK"
    npm install --prefix "$WORK" --no-audit --no-fund --silent "http-cache-tests@$SUITE_VERSION"
fi

echo "building the proxy (examples/cache_proxy.rs)"
cargo build --example cache_proxy --locked --quiet
PROXY_BIN="$(cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')/debug/examples/cache_proxy"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing is listening on 127.0.0.1:$1" >&2
    return 1
}

for port in "$ORIGIN_PORT" "$PROXY_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "127.0.0.1:$port is already in use (another run?): set ORIGIN_PORT / PROXY_PORT to free ports" >&2
        exit 1
    fi
done

(cd "$SUITE" && npm_config_protocol=http npm_config_port="$ORIGIN_PORT" \
    npm_config_pidfile="$PWD/../../server.pid" exec node server/server.mjs) >"$WORK/origin.log" 2>&1 &
pids+=($!)
"$PROXY_BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" >"$WORK/proxy.log" 2>&1 &
pids+=($!)
wait_port "$ORIGIN_PORT"
wait_port "$PROXY_PORT"
for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "the origin or the proxy exited at start:" >&2
        cat "$WORK/origin.log" "$WORK/proxy.log" >&2
        exit 1
    fi
done

echo "running the suite against the proxy on 127.0.0.1:$PROXY_PORT"
(cd "$SUITE" && npm_config_base="http://127.0.0.1:$PROXY_PORT" npm_config_id="" npm_package_config_id="" \
    node --no-warnings cli.mjs) >"$WORK/results.json"

node conformance/summary.mjs "$SUITE" "$WORK/results.json" conformance/known-failures.txt
