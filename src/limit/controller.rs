//! The controller shared by every clone of the service: the limit, the
//! in-flight counts, the window being filled, the wait queue.

use std::{
    collections::VecDeque,
    future::Future as _,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use http::HeaderValue;
use metrics::{Counter, Gauge};
use tokio::{sync::oneshot, time::Instant};

use super::{partition::Partitions, window::Accumulator, Algorithm, Outcome, Window};

/// The order a full limiter serves its wait queue in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Fifo,
    Lifo,
}

/// A bounded wait queue for requests that arrive over the limit.
///
/// Off by default: over the limit, a request is answered at once. With a
/// queue, it waits up to `timeout` for a slot, then gets the overload
/// response. [`Queue::lifo`] serves the newest waiter first: under sustained
/// overload the oldest waiters time out while fresh requests (whose clients
/// are still there) get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub(crate) capacity: usize,
    pub(crate) timeout: Duration,
    pub(crate) order: Order,
}

impl Queue {
    /// A first-in first-out queue of at most `capacity` waiters.
    pub fn fifo(capacity: usize, timeout: Duration) -> Self {
        Self {
            capacity,
            timeout,
            order: Order::Fifo,
        }
    }

    /// A last-in first-out queue of at most `capacity` waiters.
    pub fn lifo(capacity: usize, timeout: Duration) -> Self {
        Self {
            capacity,
            timeout,
            order: Order::Lifo,
        }
    }
}

/// Everything the builder sets.
#[derive(Debug, Clone)]
pub(crate) struct Config<A> {
    pub(crate) algorithm: A,
    pub(crate) initial: usize,
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) window: Window,
    pub(crate) queue: Option<Queue>,
    pub(crate) partitions: Partitions,
    pub(crate) retry_after: HeaderValue,
}

/// The figures a [`LimitHandle`](super::LimitHandle) reads, kept without the lock.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) limit: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) queue_timeouts: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) samples: AtomicU64,
}

/// Metric handles, resolved once.
#[derive(Debug)]
struct Metrics {
    limit: Gauge,
    in_flight: Gauge,
    admitted: Counter,
    rejected: Counter,
    queued: Counter,
    queue_timeouts: Counter,
    drops: Counter,
}

impl Metrics {
    fn new() -> Self {
        const REQUESTS: &str = "concurrency_limit.requests";
        metrics::describe_gauge!("concurrency_limit.limit", "The adaptive concurrency limit.");
        metrics::describe_gauge!(
            "concurrency_limit.in_flight",
            "Requests holding a concurrency permit."
        );
        metrics::describe_counter!(
            REQUESTS,
            "Requests seen by the concurrency limiter, by outcome."
        );
        metrics::describe_counter!(
            "concurrency_limit.drops",
            "Requests the limiter's classifier counted as drops."
        );
        Self {
            limit: metrics::gauge!("concurrency_limit.limit"),
            in_flight: metrics::gauge!("concurrency_limit.in_flight"),
            admitted: metrics::counter!(REQUESTS, "outcome" => "admitted"),
            rejected: metrics::counter!(REQUESTS, "outcome" => "rejected"),
            queued: metrics::counter!(REQUESTS, "outcome" => "queued"),
            queue_timeouts: metrics::counter!(REQUESTS, "outcome" => "queue_timeout"),
            drops: metrics::counter!("concurrency_limit.drops"),
        }
    }
}

/// A slot handed to a waiter: it is already counted in flight.
#[derive(Debug)]
pub(crate) struct Grant {
    in_flight: usize,
}

#[derive(Debug)]
struct Waiter {
    partition: Option<usize>,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug)]
struct State<A> {
    algorithm: A,
    limit: usize,
    in_flight: usize,
    partition_in_flight: Vec<usize>,
    window: Accumulator,
    queue: VecDeque<Waiter>,
}

/// The shared controller.
#[derive(Debug)]
pub(crate) struct Shared<A> {
    pub(crate) config: Config<A>,
    pub(crate) stats: Arc<Stats>,
    state: Mutex<State<A>>,
    metrics: Metrics,
}

/// What admission decided.
#[derive(Debug)]
pub(crate) enum Admit<A: Algorithm> {
    Now(Permit<A>),
    Queued(Ticket<A>),
    Rejected,
}

impl<A: Algorithm> Shared<A> {
    pub(crate) fn new(mut config: Config<A>) -> Self {
        config.max = config.max.max(1);
        config.min = config.min.clamp(1, config.max);
        config.initial = config.initial.clamp(config.min, config.max);
        let capacity = config.queue.map_or(0, |q| q.capacity);
        let state = State {
            algorithm: config.algorithm.clone(),
            limit: config.initial,
            in_flight: 0,
            partition_in_flight: vec![0; config.partitions.len()],
            window: Accumulator::new(config.window),
            queue: VecDeque::with_capacity(capacity),
        };
        let stats = Stats::default();
        stats.limit.store(config.initial, Relaxed);
        let metrics = Metrics::new();
        metrics.limit.set(config.initial as f64);
        metrics.in_flight.set(0.0);
        Self {
            config,
            stats: Arc::new(stats),
            state: Mutex::new(state),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<A>> {
        // A panicking custom algorithm must not take the service down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a request of `partition` now, queues it, or rejects it.
    pub(crate) fn admit(self: &Arc<Self>, partition: Option<usize>) -> Admit<A> {
        let mut state = self.lock();
        if self.admissible(&state, partition) {
            let in_flight = self.enter(&mut state, partition);
            self.count_admitted();
            drop(state);
            return Admit::Now(Permit::new(self.clone(), partition, in_flight));
        }
        if let Some(queue) = self.config.queue {
            if state.queue.len() >= queue.capacity {
                state.queue.retain(|w| !w.tx.is_closed());
            }
            if state.queue.len() < queue.capacity {
                let (tx, rx) = oneshot::channel();
                state.queue.push_back(Waiter { partition, tx });
                drop(state);
                self.stats.queued.fetch_add(1, Relaxed);
                self.metrics.queued.increment(1);
                return Admit::Queued(Ticket {
                    shared: self.clone(),
                    partition,
                    rx,
                });
            }
        }
        drop(state);
        self.count_rejected();
        Admit::Rejected
    }

    /// Under the lock, so a plain load and store count without a
    /// read-modify-write.
    fn count_admitted(&self) {
        bump(&self.stats.admitted);
        self.metrics.admitted.increment(1);
    }

    pub(crate) fn count_rejected(&self) {
        self.stats.rejected.fetch_add(1, Relaxed);
        self.metrics.rejected.increment(1);
    }

    pub(crate) fn count_queue_timeout(&self) {
        self.stats.queue_timeouts.fetch_add(1, Relaxed);
        self.metrics.queue_timeouts.increment(1);
        self.count_rejected();
    }

    /// Under the limit, or under the partition's guaranteed share.
    fn admissible(&self, state: &State<A>, partition: Option<usize>) -> bool {
        state.in_flight < state.limit
            || partition.is_some_and(|p| {
                state.partition_in_flight[p] < self.config.partitions.guaranteed(p, state.limit)
            })
    }

    fn enter(&self, state: &mut State<A>, partition: Option<usize>) -> usize {
        state.in_flight += 1;
        if let Some(p) = partition {
            state.partition_in_flight[p] += 1;
        }
        self.publish_in_flight(state.in_flight);
        state.in_flight
    }

    fn leave(&self, state: &mut State<A>, partition: Option<usize>) {
        state.in_flight -= 1;
        if let Some(p) = partition {
            state.partition_in_flight[p] -= 1;
        }
        self.publish_in_flight(state.in_flight);
    }

    fn publish_in_flight(&self, in_flight: usize) {
        self.stats.in_flight.store(in_flight, Relaxed);
        self.metrics.in_flight.set(in_flight as f64);
    }

    /// Ends a permit: frees its slot, feeds the window, hands free slots to
    /// waiters.
    fn release(&self, permit: &Permit<A>) {
        let now = Instant::now();
        let mut state = self.lock();
        self.leave(&mut state, permit.partition);
        if permit.outcome != Outcome::Ignore {
            let rtt = now.saturating_duration_since(permit.start);
            let dropped = permit.outcome == Outcome::Drop;
            bump(&self.stats.samples);
            if dropped {
                bump(&self.stats.drops);
                self.metrics.drops.increment(1);
            }
            if let Some(sample) = state.window.add(now, rtt, permit.in_flight, dropped) {
                let limit = state.limit;
                let mut next = state.algorithm.update(limit, &sample);
                if next > limit && sample.app_limited(limit) {
                    next = limit;
                }
                let next = next.clamp(self.config.min, self.config.max);
                if next != limit {
                    state.limit = next;
                    self.stats.limit.store(next, Relaxed);
                    self.metrics.limit.set(next as f64);
                }
            }
        }
        if let Some(queue) = self.config.queue {
            self.grant_waiters(&mut state, queue.order);
        }
    }

    /// Hands slots to waiters while there are slots and waiters that fit.
    fn grant_waiters(&self, state: &mut State<A>, order: Order) {
        loop {
            let next = match order {
                Order::Fifo => (0..state.queue.len()).find(|&i| self.fits(state, i)),
                Order::Lifo => (0..state.queue.len()).rev().find(|&i| self.fits(state, i)),
            };
            let Some(waiter) = next.and_then(|i| state.queue.remove(i)) else {
                return;
            };
            let in_flight = self.enter(state, waiter.partition);
            if waiter.tx.send(Grant { in_flight }).is_err() {
                // The waiter gave up (timed out or cancelled): undo.
                self.leave(state, waiter.partition);
            } else {
                self.count_admitted();
            }
        }
    }

    fn fits(&self, state: &State<A>, index: usize) -> bool {
        let waiter = &state.queue[index];
        !waiter.tx.is_closed() && self.admissible(state, waiter.partition)
    }
}

/// Adds one to a counter only ever written under the state lock.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

/// A request's slot under the limit; ends (and is sampled) when dropped.
#[derive(Debug)]
pub(crate) struct Permit<A: Algorithm> {
    shared: Arc<Shared<A>>,
    partition: Option<usize>,
    start: Instant,
    in_flight: usize,
    outcome: Outcome,
}

impl<A: Algorithm> Permit<A> {
    fn new(shared: Arc<Shared<A>>, partition: Option<usize>, in_flight: usize) -> Self {
        Self {
            shared,
            partition,
            start: Instant::now(),
            in_flight,
            outcome: Outcome::Ignore,
        }
    }

    /// Ends the permit with this outcome.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl<A: Algorithm> Drop for Permit<A> {
    fn drop(&mut self) {
        self.shared.release(self);
    }
}

/// A place in the wait queue.
#[derive(Debug)]
pub(crate) struct Ticket<A: Algorithm> {
    shared: Arc<Shared<A>>,
    partition: Option<usize>,
    rx: oneshot::Receiver<Grant>,
}

impl<A: Algorithm> Ticket<A> {
    /// Polls for a slot; `Ready(None)` if the controller went away.
    pub(crate) fn poll_grant(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Permit<A>>> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|grant| grant.ok().map(|g| self.permit(g)))
    }

    fn permit(&self, grant: Grant) -> Permit<A> {
        Permit::new(self.shared.clone(), self.partition, grant.in_flight)
    }

    /// Gives up the place; a slot granted meanwhile is returned.
    pub(crate) fn cancel(&mut self) -> Option<Permit<A>> {
        self.rx.close();
        self.rx.try_recv().ok().map(|g| self.permit(g))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<A>> {
        &self.shared
    }
}

impl<A: Algorithm> Drop for Ticket<A> {
    fn drop(&mut self) {
        // A slot granted but never picked up goes back (unsampled).
        drop(self.cancel());
    }
}
