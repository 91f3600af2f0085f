use std::time::Duration;

use tokio::time::Instant;

use super::Sample;

/// How finished requests are grouped into the windows an
/// [`Algorithm`](super::Algorithm) sees.
///
/// A window closes once it has lasted `min_time` (from its first finished
/// request) and holds `min_samples` requests, or as soon as it holds
/// `max_samples`. Its RTT is the average of the successful requests'
/// latencies, or a percentile of them.
///
/// | parameter | default |
/// |---|---|
/// | [`min_time`](Window::min_time) | 100 ms |
/// | [`min_samples`](Window::min_samples) | 20 |
/// | [`max_samples`](Window::max_samples) | 1000 |
/// | RTT | [average](Window::average) |
///
/// Netflix's `WindowedLimit` defaults to one-second windows of at least ten
/// samples; shorter windows here let the limit react within a few hundred
/// milliseconds, and twenty samples keep the average's noise near 20 % even
/// for exponential service times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    min_time: Duration,
    min_samples: usize,
    max_samples: usize,
    percentile: Option<f64>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            min_time: Duration::from_millis(100),
            min_samples: 20,
            max_samples: 1000,
            percentile: None,
        }
    }
}

impl Window {
    /// The default window.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shortest a window lasts.
    pub fn min_time(mut self, min_time: Duration) -> Self {
        self.min_time = min_time;
        self
    }

    /// The fewest requests a window holds (at least 1).
    pub fn min_samples(mut self, samples: usize) -> Self {
        self.min_samples = samples.max(1);
        self.max_samples = self.max_samples.max(self.min_samples);
        self
    }

    /// A window closes as soon as it holds this many requests (at least
    /// `min_samples`); it also bounds the memory a percentile window keeps.
    pub fn max_samples(mut self, samples: usize) -> Self {
        self.max_samples = samples.max(self.min_samples);
        self
    }

    /// The window RTT is the average latency (the default).
    pub fn average(mut self) -> Self {
        self.percentile = None;
        self
    }

    /// The window RTT is this percentile of the latencies, in `(0, 1]`
    /// (`0.9` is p90); out-of-range values are clamped.
    pub fn percentile(mut self, p: f64) -> Self {
        self.percentile = Some(if p.is_finite() {
            p.clamp(0.01, 1.0)
        } else {
            0.5
        });
        self
    }
}

/// The window being filled.
#[derive(Debug)]
pub(crate) struct Accumulator {
    config: Window,
    /// When the window's first request finished.
    start: Option<Instant>,
    samples: usize,
    drops: usize,
    sum: Duration,
    /// Sum of squared RTTs, in seconds², for the standard deviation.
    sum_sq: f64,
    min: Duration,
    max_in_flight: usize,
    /// Successful RTTs, kept only for percentile windows; allocated once.
    rtts: Vec<Duration>,
}

impl Accumulator {
    pub(crate) fn new(config: Window) -> Self {
        let keep = if config.percentile.is_some() {
            config.max_samples
        } else {
            0
        };
        Self {
            config,
            start: None,
            samples: 0,
            drops: 0,
            sum: Duration::ZERO,
            sum_sq: 0.0,
            min: Duration::MAX,
            max_in_flight: 0,
            rtts: Vec::with_capacity(keep),
        }
    }

    /// Adds one finished request; returns the window's sample if that closed it.
    pub(crate) fn add(
        &mut self,
        now: Instant,
        rtt: Duration,
        in_flight: usize,
        dropped: bool,
    ) -> Option<Sample> {
        let start = *self.start.get_or_insert(now);
        self.samples += 1;
        self.max_in_flight = self.max_in_flight.max(in_flight);
        if dropped {
            self.drops += 1;
        } else {
            self.sum = self.sum.saturating_add(rtt);
            self.sum_sq += rtt.as_secs_f64().powi(2);
            self.min = self.min.min(rtt);
            if self.rtts.len() < self.rtts.capacity() {
                self.rtts.push(rtt);
            }
        }
        let full = self.samples >= self.config.max_samples;
        let due = self.samples >= self.config.min_samples
            && now.saturating_duration_since(start) >= self.config.min_time;
        (full || due).then(|| self.close())
    }

    fn close(&mut self) -> Sample {
        let ok = self.samples - self.drops;
        let rtt = match self.config.percentile {
            _ if ok == 0 => Duration::ZERO,
            None => Duration::from_nanos((self.sum.as_nanos() / ok as u128) as u64),
            Some(p) => {
                let rank = ((self.rtts.len() as f64 * p).ceil() as usize).clamp(1, self.rtts.len());
                *self.rtts.select_nth_unstable(rank - 1).1
            }
        };
        let std_dev = if ok < 2 {
            0.0
        } else {
            let n = ok as f64;
            let mean = self.sum.as_secs_f64() / n;
            ((self.sum_sq - n * mean * mean) / (n - 1.0))
                .max(0.0)
                .sqrt()
        };
        let sample = Sample {
            rtt,
            min_rtt: if ok == 0 { Duration::ZERO } else { self.min },
            rtt_std_dev: Duration::try_from_secs_f64(std_dev).unwrap_or(Duration::MAX),
            max_in_flight: self.max_in_flight,
            samples: self.samples,
            drops: self.drops,
        };
        self.start = None;
        self.samples = 0;
        self.drops = 0;
        self.sum = Duration::ZERO;
        self.sum_sq = 0.0;
        self.min = Duration::MAX;
        self.max_in_flight = 0;
        self.rtts.clear();
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn closes_on_time_and_count() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(Window::new().min_samples(2).max_samples(3));
        assert_eq!(acc.add(t0, 10 * MS, 1, false), None);
        // Two samples, but the window is young.
        assert_eq!(acc.add(t0 + 50 * MS, 20 * MS, 3, false), None);
        // Full: closes early.
        let s = acc.add(t0 + 60 * MS, 5 * MS, 2, true).unwrap();
        assert_eq!(
            (s.rtt, s.min_rtt, s.max_in_flight, s.samples, s.drops),
            (15 * MS, 10 * MS, 3, 3, 1)
        );
        // Sample standard deviation of 10 and 20 ms.
        let sd = s.rtt_std_dev.as_secs_f64() * 1000.0;
        assert!((sd - 50f64.sqrt()).abs() < 1e-6, "{sd}");
        assert!((s.relative_error() - sd / 15.0 / 2f64.sqrt()).abs() < 1e-9);
        // Old enough (from its first request) and two samples: closes.
        assert_eq!(acc.add(t0 + 100 * MS, MS, 1, true), None);
        let s = acc.add(t0 + 200 * MS, MS, 1, true).unwrap();
        assert_eq!(
            (s.rtt, s.min_rtt, s.drops),
            (Duration::ZERO, Duration::ZERO, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn percentile() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(Window::new().min_samples(10).percentile(0.9));
        let mut last = None;
        for (j, i) in (1..=10).rev().enumerate() {
            last = acc.add(t0 + 20 * j as u32 * MS, i * MS, 1, false);
        }
        assert_eq!(last.unwrap().rtt, 9 * MS);
        assert_eq!(acc.rtts.capacity(), 1000);
    }
}
