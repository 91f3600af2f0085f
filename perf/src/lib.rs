//! Side-by-side benchmarks of `tower-perf` against the bare service and the
//! peer crates that do the same jobs. Not published.
//!
//! - criterion benches: `cargo bench -p tower-perf-bench`;
//! - the loopback comparison (binary `loopback`): `bash scripts/bench-loopback.sh`
//!   (`--help` for its options) builds it in release, runs every contender
//!   over 127.0.0.1 and writes `bench-results/loopback.md`.
