//! The clock that times requests: the CPU's time-stamp counter by default,
//! tokio's clock on request.
//!
//! A request reads the clock twice (when it enters, when it ends). Through
//! `std::time::Instant` (and `tokio::time::Instant`, which wraps it) each
//! read is a `clock_gettime` call; a `quanta::Clock` reads the time-stamp
//! counter directly and scales only the difference to nanoseconds, with a
//! calibration `quanta` runs once per process: a read costs about a third.
//! Where the CPU has no invariant counter, `quanta` falls back to the OS
//! monotonic clock.

use std::time::Duration;

/// The clock a layer reads.
#[derive(Clone, Debug)]
pub(crate) enum Clock {
    /// A `quanta` clock: the time-stamp counter, or a mock in tests.
    Quanta(quanta::Clock),
    /// `tokio::time::Instant`: follows tokio's paused clock in tests.
    Tokio,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::Quanta(quanta::Clock::new())
    }
}

/// When a request entered, on the layer's clock; or how long it took, once
/// its clock stopped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    /// A raw `quanta` reading (counter ticks).
    Quanta(u64),
    Tokio(tokio::time::Instant),
    /// Nanoseconds (a `Duration` would make this a word larger).
    Stopped(u64),
}

impl Clock {
    #[inline]
    pub(crate) fn now(&self) -> Start {
        match self {
            Clock::Quanta(clock) => Start::Quanta(clock.raw()),
            Clock::Tokio => Start::Tokio(tokio::time::Instant::now()),
        }
    }

    /// The time since `start`, read from this clock (the one that read
    /// `start`).
    #[inline]
    pub(crate) fn elapsed(&self, start: Start) -> Duration {
        match (start, self) {
            // Zero if the counters of two cores disagree by a few ticks.
            (Start::Quanta(start), Clock::Quanta(clock)) => clock.delta(start, clock.raw()),
            (Start::Tokio(start), _) => start.elapsed(),
            (Start::Stopped(nanos), _) => Duration::from_nanos(nanos),
            // A layer's clock never changes.
            (Start::Quanta(_), Clock::Tokio) => Duration::ZERO,
        }
    }

    /// Stops the clock of a request that started at `start`.
    pub(crate) fn stop(&self, start: Start) -> Start {
        let nanos = self.elapsed(start).as_nanos();
        Start::Stopped(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}
