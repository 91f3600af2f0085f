//! The clock that times requests: the CPU's time-stamp counter by default,
//! tokio's clock on request.
//!
//! A request reads the clock twice (when it enters, when it ends). Through
//! `std::time::Instant` (and `tokio::time::Instant`, which wraps it) each
//! read is a `clock_gettime` call; `quanta` reads the time-stamp counter
//! directly and scales it to nanoseconds with a calibration it runs once per
//! process, at about a third of the cost. Where the CPU has no invariant
//! counter, `quanta` falls back to the OS monotonic clock.

use std::time::Duration;

/// Which clock a layer reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `quanta`: the time-stamp counter.
    #[default]
    Tsc,
    /// `tokio::time::Instant`: follows tokio's paused clock in tests.
    Tokio,
}

/// When a request entered, on the layer's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    Tsc(quanta::Instant),
    Tokio(tokio::time::Instant),
}

impl Clock {
    #[inline]
    pub(crate) fn now(self) -> Start {
        match self {
            Clock::Tsc => Start::Tsc(quanta::Instant::now()),
            Clock::Tokio => Start::Tokio(tokio::time::Instant::now()),
        }
    }

    /// Calibrates the counter now (once per process, up to 200 ms) rather
    /// than on the first request.
    pub(crate) fn warm_up(self) {
        if self == Clock::Tsc {
            quanta::Instant::now();
        }
    }
}

impl Start {
    #[inline]
    pub(crate) fn elapsed(self) -> Duration {
        match self {
            // Saturates: counters of two cores may disagree by a few ticks.
            Start::Tsc(start) => quanta::Instant::now().saturating_duration_since(start),
            Start::Tokio(start) => start.elapsed(),
        }
    }
}
