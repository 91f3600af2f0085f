use std::sync::{atomic::Ordering::Relaxed, Arc};

use super::controller::Stats;

/// A cloneable view of a limiter's live figures, from
/// [`AdaptiveLimitLayer::handle`](super::AdaptiveLimitLayer::handle).
///
/// Reads are lock-free; the figures are the same the layer emits through the
/// `metrics` facade.
#[derive(Debug, Clone)]
pub struct LimitHandle {
    pub(crate) stats: Arc<Stats>,
}

/// Counters since the layer was built; see [`LimitHandle::counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Requests admitted (at once or from the queue).
    pub admitted: u64,
    /// Requests answered with the overload response (queue timeouts included).
    pub rejected: u64,
    /// Requests that entered the wait queue.
    pub queued: u64,
    /// Requests that left the wait queue on its timeout.
    pub queue_timeouts: u64,
    /// Finished requests the algorithm saw (drops included).
    pub samples: u64,
    /// Finished requests classified as drops.
    pub drops: u64,
}

impl LimitHandle {
    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.stats.limit.load(Relaxed)
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Relaxed)
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        let s = &self.stats;
        Counters {
            admitted: s.admitted.load(Relaxed),
            rejected: s.rejected.load(Relaxed),
            queued: s.queued.load(Relaxed),
            queue_timeouts: s.queue_timeouts.load(Relaxed),
            samples: s.samples.load(Relaxed),
            drops: s.drops.load(Relaxed),
        }
    }
}
