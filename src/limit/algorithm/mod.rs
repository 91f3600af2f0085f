//! Limit algorithms: what the limit becomes after each window of samples.

use std::{fmt, time::Duration};

mod aimd;
mod gradient2;
mod vegas;

pub use aimd::Aimd;
pub use gradient2::Gradient2;
pub use vegas::Vegas;

/// What a window of finished requests measured, handed to an [`Algorithm`].
///
/// A sample is taken when a request's permit ends: when its response body
/// ends, or when the service fails. Dropped requests (see
/// [`Outcome::Drop`](super::Outcome::Drop)) count in `samples` and `drops`
/// but not in the RTT figures, so fast error responses never look like a fast
/// backend; cancelled requests are not sampled at all.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// The window's RTT: the average or the configured percentile of the
    /// successful requests' latencies (see [`Window`](super::Window)); zero
    /// when every request in the window was dropped.
    pub rtt: Duration,
    /// The lowest RTT in the window; zero when every request was dropped.
    pub min_rtt: Duration,
    /// The standard deviation of the successful requests' RTTs; zero with
    /// fewer than two of them.
    pub rtt_std_dev: Duration,
    /// The highest in-flight count seen when a request of the window started
    /// (the request itself included).
    pub max_in_flight: usize,
    /// Requests sampled in the window, drops included.
    pub samples: usize,
    /// Requests classified as drops.
    pub drops: usize,
}

impl Sample {
    /// Whether the window's requests never filled half of `limit`: the
    /// demand, not the backend, bounded the concurrency, so the RTT says
    /// nothing about a higher limit.
    pub fn app_limited(&self, limit: usize) -> bool {
        self.max_in_flight * 2 < limit
    }

    /// The standard error of the window's mean RTT relative to its RTT
    /// (`rtt_std_dev / (rtt × √n)` over the `n` successful requests): how
    /// far the window's RTT is from the backend's true mean by chance alone.
    /// Zero when the RTT is zero.
    pub fn relative_error(&self) -> f64 {
        let ok = self.samples.saturating_sub(self.drops);
        if self.rtt.is_zero() || ok == 0 {
            return 0.0;
        }
        self.rtt_std_dev.as_secs_f64() / (self.rtt.as_secs_f64() * (ok as f64).sqrt())
    }
}

/// A limit algorithm: takes the current limit and a window's [`Sample`],
/// returns the next limit.
///
/// The layer calls [`update`](Algorithm::update) once per window, under a
/// lock shared by every request, then clamps the result to the configured
/// minimum and maximum. It also holds the limit where it is when the window
/// was [app-limited](Sample::app_limited) and the algorithm asked for more, so
/// no algorithm drifts upward at light load; an algorithm still sees those
/// windows to keep its RTT baselines current.
///
/// The layer clones the algorithm it is given into its shared controller, so
/// an algorithm is plain state and `Clone`.
///
/// ```
/// use tower_perf::limit::{AdaptiveLimitLayer, Algorithm, Sample};
///
/// /// Halves on any drop, otherwise grows by one per window.
/// #[derive(Debug, Clone)]
/// struct Halving;
///
/// impl Algorithm for Halving {
///     fn update(&mut self, limit: usize, sample: &Sample) -> usize {
///         if sample.drops > 0 { limit / 2 } else { limit + 1 }
///     }
/// }
///
/// let layer = AdaptiveLimitLayer::with_algorithm(Halving).initial_limit(8);
/// assert_eq!(layer.handle().limit(), 8);
/// ```
pub trait Algorithm: Clone + fmt::Debug + Send + Sync + 'static {
    /// The limit after a window that measured `sample`, starting from `limit`.
    fn update(&mut self, limit: usize, sample: &Sample) -> usize;
}

/// `max(1, log10(limit))`: the step size Netflix's Vegas uses, never zero so
/// small limits still move.
pub(crate) fn log10_step(limit: f64) -> f64 {
    limit.max(1.0).log10().max(1.0)
}

/// An exponential moving average over about `window` values, a plain average
/// for the first `warmup` values.
#[derive(Debug, Clone)]
pub(crate) struct ExpAvg {
    window: f64,
    warmup: u32,
    count: u32,
    value: f64,
}

impl ExpAvg {
    pub(crate) fn new(window: usize, warmup: u32) -> Self {
        Self {
            window: window.max(1) as f64,
            warmup,
            count: 0,
            value: 0.0,
        }
    }

    pub(crate) fn add(&mut self, x: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.value += (x - self.value) / f64::from(self.count);
        } else {
            let factor = 2.0 / (self.window + 1.0);
            self.value = self.value * (1.0 - factor) + x * factor;
        }
        self.value
    }

    pub(crate) fn scale(&mut self, by: f64) {
        self.value *= by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_avg_warms_up_then_decays() {
        let mut avg = ExpAvg::new(3, 2);
        assert_eq!(avg.add(10.0), 10.0);
        assert_eq!(avg.add(20.0), 15.0);
        assert_eq!(avg.add(35.0), 25.0); // factor 0.5
        avg.scale(0.5);
        assert_eq!(avg.add(12.5), 12.5);
    }

    #[test]
    fn log10_step_is_at_least_one() {
        assert_eq!(log10_step(0.0), 1.0);
        assert_eq!(log10_step(5.0), 1.0);
        assert_eq!(log10_step(100.0), 2.0);
    }
}
