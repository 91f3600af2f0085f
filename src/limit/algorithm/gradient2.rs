use super::{Algorithm, ExpAvg, Sample};

/// Gradient-based: compares the latest window's RTT with a long-term average
/// RTT and scales the limit by their ratio.
///
/// After each window, with `long` an exponential average of the window RTTs:
///
/// ```text
/// gradient = clamp(tolerance × long / rtt, 0.5, 1.0)
/// new      = limit × gradient + queue_size
/// limit    = limit × (1 − smoothing) + new × smoothing
/// ```
///
/// When `long / rtt > 2` (the backend recovered), `long` decays by 5 % per
/// window so the limit can grow again. Gradient2 ignores drops: it sees
/// overload only as rising latency, so it tolerates up to `tolerance ×` the
/// long-term RTT before shrinking.
///
/// Source: Netflix concurrency-limits, `Gradient2Limit`; defaults are its
/// defaults.
///
/// | parameter | default |
/// |---|---|
/// | [`tolerance`](Gradient2::tolerance) | 1.5 |
/// | [`smoothing`](Gradient2::smoothing) | 0.2 |
/// | [`queue_size`](Gradient2::queue_size) | 4 |
/// | [`long_window`](Gradient2::long_window) | 600 windows (10 warm-up) |
#[derive(Debug, Clone)]
pub struct Gradient2 {
    tolerance: f64,
    smoothing: f64,
    queue_size: f64,
    long_rtt: ExpAvg,
    estimate: Option<f64>,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self {
            tolerance: 1.5,
            smoothing: 0.2,
            queue_size: 4.0,
            long_rtt: ExpAvg::new(600, 10),
            estimate: None,
        }
    }
}

impl Gradient2 {
    /// How much the short RTT may exceed the long-term RTT before the limit
    /// shrinks; at least 1.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = if tolerance.is_finite() {
            tolerance.max(1.0)
        } else {
            1.5
        };
        self
    }

    /// How much of each step is taken, in `(0, 1]`.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = if smoothing.is_finite() {
            smoothing.clamp(0.01, 1.0)
        } else {
            0.2
        };
        self
    }

    /// Headroom added on every window, so the limit probes upward.
    pub fn queue_size(mut self, queue_size: usize) -> Self {
        self.queue_size = queue_size as f64;
        self
    }

    /// The number of windows the long-term RTT averages over.
    pub fn long_window(mut self, windows: usize) -> Self {
        self.long_rtt = ExpAvg::new(windows, 10);
        self
    }
}

impl Algorithm for Gradient2 {
    fn update(&mut self, limit: usize, sample: &Sample) -> usize {
        let current = match self.estimate {
            Some(e) if e.round() as usize == limit => e,
            _ => limit as f64,
        };
        if sample.rtt.is_zero() {
            return limit;
        }
        let short = sample.rtt.as_secs_f64();
        let mut long = self.long_rtt.add(short);
        if long / short > 2.0 {
            self.long_rtt.scale(0.95);
            long *= 0.95;
        }
        if sample.app_limited(limit) {
            return limit;
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let new = current * gradient + self.queue_size;
        let next = (current * (1.0 - self.smoothing) + new * self.smoothing).max(1.0);
        self.estimate = Some(next);
        next.round() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(rtt_ms: u64, in_flight: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(rtt_ms),
            rtt_std_dev: Duration::ZERO,
            max_in_flight: in_flight,
            samples: 10,
            drops: 0,
        }
    }

    #[test]
    fn probes_up_then_backs_off() {
        let mut g = Gradient2::default();
        // Steady RTT: gradient 1, grows by smoothing * queue_size.
        assert_eq!(g.update(20, &sample(10, 20)), 21); // 20.8
        assert_eq!(g.update(21, &sample(10, 20)), 22); // 21.6
                                                       // RTT six times: gradient 2/3.
        let next = g.update(22, &sample(60, 22));
        assert!(next < 22, "{next}");
        // App-limited: hold.
        assert_eq!(g.update(next, &sample(10, 2)), next);
    }
}
