//! Percentiles and the per-scenario summary computed from raw samples.

use std::time::Duration;

/// Latency percentiles of one set of samples (nearest-rank on the sorted samples).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) count: usize,
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Percentiles {
    /// Sorts `micros` in place and reads the percentiles; `None` when there are no samples.
    pub(crate) fn of(micros: &mut [u32]) -> Option<Self> {
        micros.sort_unstable();
        let sorted = &*micros;
        let at = |p: f64| {
            nearest_rank(p, sorted.len()).map(|i| Duration::from_micros(u64::from(sorted[i])))
        };
        Some(Self {
            count: sorted.len(),
            p50: at(50.0)?,
            p95: at(95.0)?,
            p99: at(99.0)?,
            max: at(100.0)?,
        })
    }
}

/// Index of the `p`-th percentile in a sorted slice of `n` samples: the smallest sample
/// with at least `p`% of the samples at or below it (`None` when `n == 0`).
pub(crate) fn nearest_rank(p: f64, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    Some(rank.clamp(1, n) - 1)
}

/// Formats a latency with three significant figures and a unit a reader expects.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 10_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.0}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_definition() {
        assert_eq!(nearest_rank(50.0, 0), None);
        assert_eq!(nearest_rank(50.0, 1), Some(0));
        assert_eq!(nearest_rank(99.0, 1), Some(0));
        // 10 samples: P50 is the 5th, P95 and P99 the 10th, P0 clamps to the 1st.
        assert_eq!(nearest_rank(50.0, 10), Some(4));
        assert_eq!(nearest_rank(95.0, 10), Some(9));
        assert_eq!(nearest_rank(99.0, 10), Some(9));
        assert_eq!(nearest_rank(0.0, 10), Some(0));
        // 1000 samples: P99 is the 990th.
        assert_eq!(nearest_rank(99.0, 1000), Some(989));
        assert_eq!(nearest_rank(100.0, 1000), Some(999));
    }

    #[test]
    fn percentiles_of_a_shuffled_range() {
        // 1..=100 in a scrambled order: P50 = 50, P95 = 95, P99 = 99, max = 100.
        let mut micros: Vec<u32> = (1..=100).map(|i| (i * 37) % 101).collect();
        let p = Percentiles::of(&mut micros).unwrap();
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_micros(50));
        assert_eq!(p.p95, Duration::from_micros(95));
        assert_eq!(p.p99, Duration::from_micros(99));
        assert_eq!(p.max, Duration::from_micros(100));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn one_slow_outlier_shows_in_p99_only_when_it_is_over_one_percent() {
        let mut micros = vec![1_000; 200];
        micros[7] = 900_000;
        let p = Percentiles::of(&mut micros).unwrap();
        assert_eq!(p.p99, Duration::from_micros(1_000));
        assert_eq!(p.max, Duration::from_micros(900_000));
        micros[8] = 900_000;
        micros[9] = 900_000;
        let p = Percentiles::of(&mut micros).unwrap();
        assert_eq!(p.p99, Duration::from_micros(900_000));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_micros(412)), "412µs");
        assert_eq!(fmt_duration(Duration::from_micros(4_126)), "4.13ms");
        assert_eq!(fmt_duration(Duration::from_micros(41_250)), "41ms");
        assert_eq!(fmt_duration(Duration::from_millis(1_500)), "1.50s");
    }
}
