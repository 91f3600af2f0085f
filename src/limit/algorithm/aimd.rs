use std::time::Duration;

use super::{Algorithm, Sample};

/// Additive increase, multiplicative decrease: loss-based, like TCP Reno.
///
/// After each window: when any request was a drop, or the window's RTT
/// exceeded the RTT ceiling, the limit becomes `limit * backoff`; otherwise it
/// grows by `increase`. It reacts only to failures the
/// [classifier](crate::limit::Classify) reports and to latency past the
/// ceiling, so it suits backends that say when they are overloaded (503, 429,
/// `RESOURCE_EXHAUSTED`) better than backends that just slow down.
///
/// Source: Netflix concurrency-limits, `AIMDLimit`; defaults are its
/// defaults.
///
/// | parameter | default |
/// |---|---|
/// | [`backoff`](Aimd::backoff) | 0.9 |
/// | [`increase`](Aimd::increase) | 1 |
/// | [`rtt_ceiling`](Aimd::rtt_ceiling) | 5 s |
#[derive(Debug, Clone)]
pub struct Aimd {
    backoff: f64,
    increase: usize,
    rtt_ceiling: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            backoff: 0.9,
            increase: 1,
            rtt_ceiling: Duration::from_secs(5),
        }
    }
}

impl Aimd {
    /// The factor the limit is multiplied by after a window with drops,
    /// clamped to `[0.5, 1.0)`.
    pub fn backoff(mut self, ratio: f64) -> Self {
        self.backoff = if ratio.is_finite() {
            ratio.clamp(0.5, 0.99)
        } else {
            0.9
        };
        self
    }

    /// How much the limit grows after a window without drops.
    pub fn increase(mut self, step: usize) -> Self {
        self.increase = step.max(1);
        self
    }

    /// A window RTT above this counts as a drop.
    pub fn rtt_ceiling(mut self, ceiling: Duration) -> Self {
        self.rtt_ceiling = ceiling;
        self
    }
}

impl Algorithm for Aimd {
    fn update(&mut self, limit: usize, sample: &Sample) -> usize {
        if sample.drops > 0 || sample.rtt > self.rtt_ceiling {
            (limit as f64 * self.backoff) as usize
        } else {
            limit + self.increase
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, drops: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(rtt_ms),
            rtt_std_dev: Duration::ZERO,
            max_in_flight: 100,
            samples: 10,
            drops,
        }
    }

    #[test]
    fn grows_backs_off() {
        let mut aimd = Aimd::default();
        assert_eq!(aimd.update(20, &sample(10, 0)), 21);
        assert_eq!(aimd.update(20, &sample(10, 1)), 18);
        assert_eq!(aimd.update(20, &sample(6_000, 0)), 18);
        let mut aimd = Aimd::default().backoff(f64::NAN).increase(0);
        assert_eq!(aimd.update(10, &sample(10, 0)), 11);
    }
}
