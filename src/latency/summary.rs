//! In-process per-route percentiles: log-linear buckets of atomics.
//!
//! Durations are bucketed by their power of two and 32 linear steps inside
//! it, so a bucket spans at most 1/32 of its lower bound and its midpoint is
//! within 1/64 (1.6 %) of every value in it. Recording is one
//! `fetch_add`; reading walks the buckets.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use super::state::Registry;

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Durations are clamped below 2^46 ns (about 19.5 hours).
const MAX_EXP: u32 = 45;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) << SUB_BITS;

/// Latency buckets of one route.
#[derive(Debug)]
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
}

fn index(nanos: u64) -> usize {
    let nanos = nanos.min((1 << (MAX_EXP + 1)) - 1);
    if nanos < SUB {
        return nanos as usize;
    }
    let exp = 63 - nanos.leading_zeros();
    let shift = exp - SUB_BITS;
    let group = u64::from(shift + 1);
    ((group << SUB_BITS) + ((nanos >> shift) & (SUB - 1))) as usize
}

/// The midpoint of bucket `index`, in nanoseconds.
fn midpoint(index: usize) -> u64 {
    let index = index as u64;
    let group = index >> SUB_BITS;
    if group == 0 {
        return index;
    }
    let width = 1u64 << (group - 1);
    (SUB + (index & (SUB - 1))) * width + width / 2
}

impl Buckets {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(nanos)].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, route: String) -> RouteSummary {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let count = counts.iter().sum();
        let quantile = |q: f64| {
            // The smallest value with at least ceil(q * count) values at or below it.
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(midpoint(i));
                }
            }
            Duration::ZERO
        };
        RouteSummary {
            route,
            count,
            p50: quantile(0.50),
            p95: quantile(0.95),
            p99: quantile(0.99),
        }
    }
}

/// A handle on the in-process latency summary of one [`LatencyLayer`].
///
/// Enabled with [`LatencyLayer::summary`]; get it from
/// [`LatencyLayer::summary_handle`]. Clones share the same data. Each quantile
/// is within [`RELATIVE_ERROR`](Self::RELATIVE_ERROR) of a recorded duration
/// of that rank.
///
/// [`LatencyLayer`]: super::LatencyLayer
/// [`LatencyLayer::summary`]: super::LatencyLayer::summary
/// [`LatencyLayer::summary_handle`]: super::LatencyLayer::summary_handle
#[derive(Clone)]
pub struct LatencySummary {
    pub(crate) registry: Arc<Registry>,
}

impl std::fmt::Debug for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySummary")
            .field("routes", &self.routes())
            .finish()
    }
}

impl LatencySummary {
    /// The largest relative error of a reported quantile: 1/64, about 1.6 %.
    pub const RELATIVE_ERROR: f64 = 1.0 / 64.0;

    /// Per-route count and percentiles, sorted by route, for every route that
    /// has recorded at least one request (unmatched requests under
    /// `"unmatched"`, requests past the series cap under
    /// `"otel.metric.overflow"`).
    pub fn routes(&self) -> Vec<RouteSummary> {
        let mut routes: Vec<RouteSummary> = self
            .registry
            .summaries()
            .into_iter()
            .filter(|s| s.count > 0)
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        routes
    }

    /// The summary of one route, if it recorded anything.
    pub fn route(&self, route: &str) -> Option<RouteSummary> {
        self.routes().into_iter().find(|s| s.route == route)
    }
}

/// Count and percentiles of one route, from [`LatencySummary`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteSummary {
    /// The route label (`http.route`).
    pub route: String,
    /// Requests recorded.
    pub count: u64,
    /// Median duration.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        // Every value maps to a bucket whose midpoint is within 1/64 of it.
        let mut values: Vec<u64> = (0..4096).collect();
        values.extend((0..60).map(|e| 1u64 << e));
        values.extend((6..46).flat_map(|e| [(1u64 << e) - 1, (1u64 << e) + 1, 3 << (e - 1)]));
        for v in values {
            let v = v.min((1 << 46) - 1);
            let mid = midpoint(index(v)) as f64;
            let err = (mid - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= LatencySummary::RELATIVE_ERROR, "{v}: {mid} ({err})");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for i in 1..BUCKETS {
            assert!(midpoint(i) > midpoint(i - 1));
        }
    }

    #[test]
    fn quantiles() {
        let b = Buckets::new();
        for ms in 1..=100 {
            b.record(Duration::from_millis(ms));
        }
        let s = b.snapshot("/r".into());
        assert_eq!(s.count, 100);
        let close = |d: Duration, ms: f64| {
            let got = d.as_secs_f64() * 1e3;
            assert!(
                (got - ms).abs() / ms <= LatencySummary::RELATIVE_ERROR,
                "{got} vs {ms}"
            );
        };
        close(s.p50, 50.0);
        close(s.p95, 95.0);
        close(s.p99, 99.0);
        let empty = Buckets::new().snapshot("/e".into());
        assert_eq!((empty.count, empty.p99), (0, Duration::ZERO));
    }
}
