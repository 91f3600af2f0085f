#!/usr/bin/env bash
# Regenerates examples/proto/catalog.rs from examples/proto/catalog.proto.
#
# Needs `protoc` (Debian/Ubuntu: `apt-get install protobuf-compiler`) and
# cargo. The generator (tonic-prost-build) runs in a throwaway cargo project
# in a temporary directory, so no build script enters the crate.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
proto_dir="$root/examples/proto"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

command -v protoc >/dev/null || {
    echo "protoc not found: install protobuf-compiler" >&2
    exit 1
}

mkdir -p "$tmp/src"
cat >"$tmp/Cargo.toml" <<'TOML'
[package]
name = "regen-proto"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tonic-prost-build = "0.14"

[workspace]
TOML
cat >"$tmp/src/main.rs" <<'RUST'
fn main() {
    let mut args = std::env::args().skip(1);
    let (proto_dir, out_dir) = (args.next().unwrap(), args.next().unwrap());
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(&out_dir)
        .compile_protos(&[format!("{proto_dir}/catalog.proto")], &[proto_dir])
        .expect("protoc failed");
}
RUST

mkdir -p "$tmp/out"
CARGO_TARGET_DIR="$tmp/target" cargo run --quiet --manifest-path "$tmp/Cargo.toml" -- \
    "$proto_dir" "$tmp/out"
# prost names the file after the package.
cp "$tmp/out/catalog.v1.rs" "$proto_dir/catalog.rs"
echo "wrote $proto_dir/catalog.rs"
