use std::time::Duration;

use super::{log10_step, Algorithm, Sample};

/// Delay-based, like TCP Vegas: estimates the queue from how far the RTT has
/// risen above the no-load RTT, and keeps that queue small.
///
/// The no-load RTT is the lowest window RTT seen; it is reset to the current
/// window's RTT every `probe_multiplier × limit` windows, so it follows a
/// backend that became slower for good. After each window, with
/// `queue = ceil(limit × (1 − rtt_noload / rtt))` and `log = max(1, log10(limit))`:
///
/// | condition | new limit |
/// |---|---|
/// | any drop | `limit − log` |
/// | `queue ≤ log` | `limit + beta × log` |
/// | `queue < alpha × log` | `limit + log` |
/// | `queue > beta × log` | `limit − log` |
/// | otherwise | `limit` |
///
/// then `limit × (1 − smoothing) + new × smoothing`.
///
/// Source: Netflix concurrency-limits, `VegasLimit`; defaults are its
/// defaults.
///
/// | parameter | default |
/// |---|---|
/// | [`alpha`](Vegas::alpha) | 3 |
/// | [`beta`](Vegas::beta) | 6 |
/// | [`smoothing`](Vegas::smoothing) | 1.0 |
/// | [`probe_multiplier`](Vegas::probe_multiplier) | 30 |
#[derive(Debug, Clone)]
pub struct Vegas {
    alpha: f64,
    beta: f64,
    smoothing: f64,
    probe_multiplier: usize,
    rtt_noload: Option<Duration>,
    windows_since_probe: usize,
    estimate: Option<f64>,
}

impl Default for Vegas {
    fn default() -> Self {
        Self {
            alpha: 3.0,
            beta: 6.0,
            smoothing: 1.0,
            probe_multiplier: 30,
            rtt_noload: None,
            windows_since_probe: 0,
            estimate: None,
        }
    }
}

impl Vegas {
    /// Below `alpha × log10(limit)` queued requests the limit grows.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = finite_or(alpha, 3.0).max(0.0);
        self
    }

    /// Above `beta × log10(limit)` queued requests the limit shrinks.
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = finite_or(beta, 6.0).max(self.alpha);
        self
    }

    /// How much of each step is taken, in `(0, 1]`.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = finite_or(smoothing, 1.0).clamp(0.01, 1.0);
        self
    }

    /// The no-load RTT is re-probed every `multiplier × limit` windows;
    /// 0 never re-probes.
    pub fn probe_multiplier(mut self, multiplier: usize) -> Self {
        self.probe_multiplier = multiplier;
        self
    }
}

fn finite_or(x: f64, default: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        default
    }
}

impl Algorithm for Vegas {
    fn update(&mut self, limit: usize, sample: &Sample) -> usize {
        // Keep the fractional estimate while the layer keeps our limit.
        let current = match self.estimate {
            Some(e) if e.round() as usize == limit => e,
            _ => limit as f64,
        };
        let log = log10_step(current);
        let next = if sample.drops > 0 {
            current - log
        } else if sample.rtt.is_zero() {
            current
        } else {
            self.windows_since_probe += 1;
            let probe = self.probe_multiplier > 0
                && self.windows_since_probe >= self.probe_multiplier * limit.max(1);
            if probe {
                self.windows_since_probe = 0;
                self.rtt_noload = None;
            }
            let noload = self.rtt_noload.map_or(sample.rtt, |n| n.min(sample.rtt));
            self.rtt_noload = Some(noload);
            if probe || sample.app_limited(limit) {
                current
            } else {
                let ratio = noload.as_secs_f64() / sample.rtt.as_secs_f64();
                let queue = (current * (1.0 - ratio)).ceil();
                if queue <= log {
                    current + self.beta * log
                } else if queue < self.alpha * log {
                    current + log
                } else if queue > self.beta * log {
                    current - log
                } else {
                    current
                }
            }
        };
        let next = (current * (1.0 - self.smoothing) + next * self.smoothing).max(1.0);
        self.estimate = Some(next);
        next.round() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, in_flight: usize, drops: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(rtt_ms),
            max_in_flight: in_flight,
            samples: 10,
            drops,
        }
    }

    #[test]
    fn grows_holds_shrinks() {
        let mut vegas = Vegas::default();
        // First window sets the no-load RTT: no queue, fast growth.
        assert_eq!(vegas.update(20, &sample(10, 20, 0)), 28);
        // RTT 2x: queue ~ 14 > beta*log10(28) ~ 8.7: shrink by log10.
        assert_eq!(vegas.update(28, &sample(20, 28, 0)), 26);
        // App-limited: hold.
        assert_eq!(vegas.update(26, &sample(20, 5, 0)), 26);
        // A drop shrinks.
        assert_eq!(vegas.update(26, &sample(10, 26, 1)), 25);
        // Never below 1.
        assert_eq!(vegas.update(1, &sample(10, 1, 1)), 1);
    }

    #[test]
    fn probe_resets_noload() {
        let mut vegas = Vegas::default().probe_multiplier(1);
        assert_eq!(vegas.update(2, &sample(10, 2, 0)), 8);
        // RTT 20 against a no-load RTT of 10: queue 4, between alpha and
        // beta, hold; the 8th window (1 × limit 8) probes: RTT 20 becomes the
        // no-load RTT, so the next window shows no queue.
        for _ in 2..=8 {
            assert_eq!(vegas.update(8, &sample(20, 8, 0)), 8);
        }
        assert_eq!(vegas.update(8, &sample(20, 8, 0)), 14);
    }
}
