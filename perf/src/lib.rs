//! Side-by-side benchmarks of `tower-perf` against the bare service and the
//! peer crates that do the same jobs. Not published; run with
//! `cargo bench -p tower-perf-bench`.
