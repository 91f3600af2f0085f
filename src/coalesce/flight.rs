//! Leader/follower state: the map of in-flight keys, the flights and their
//! waiters, and the hit-for-miss markers.
//!
//! Lock order: the map, then a flight's state; never the other way round, and
//! neither is held across an `.await`.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use http::response::Parts;
use metrics::Counter;
use tokio::{sync::oneshot, task::AbortHandle, time::Instant};

use super::layer::Config;
use crate::{body::Collected, key::Key};

/// The map is swept of expired hit-for-miss markers when it doubles past
/// this size, and at least once per hit-for-miss period.
const MIN_SWEEP: usize = 1024;
/// Beyond this many tracked keys no hit-for-miss marker is added: a flood of
/// distinct uncacheable URLs costs bounded memory (the keys just lose the
/// marker and elect leaders again).
pub(crate) const MAX_TRACKED: usize = 1 << 16;

/// State shared by a layer and every service it builds.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    hasher: RandomState,
    map: Mutex<Map>,
}

/// Pre-resolved metric handles.
pub(crate) struct Counters {
    pub(crate) leader: Counter,
    pub(crate) follower: Counter,
    pub(crate) bypass: Counter,
}

const REQUESTS: &str = "tower_perf_coalesce_requests_total";

impl Counters {
    fn new() -> Self {
        metrics::describe_counter!(
            REQUESTS,
            "Requests seen by the coalescing layer, by role: leader (called the inner \
             service for its key), follower (waited for a leader), bypass (not coalesced)"
        );
        Self {
            leader: metrics::counter!(REQUESTS, "role" => "leader"),
            follower: metrics::counter!(REQUESTS, "role" => "follower"),
            bypass: metrics::counter!(REQUESTS, "role" => "bypass"),
        }
    }
}

struct Map {
    entries: HashMap<Hashed, Entry, BuildHasherDefault<Prehashed>>,
    sweep_at: usize,
    next_sweep: Instant,
}

enum Entry {
    /// A call in flight for this key.
    Flight(Arc<Flight>),
    /// Hit-for-miss: requests for this key go upstream on their own until then.
    Pass(Instant),
}

/// A key and its hash, computed once per request (outside the lock; SipHash
/// with per-layer random keys, so hostile URLs cannot collide on purpose).
#[derive(Clone)]
struct Hashed {
    hash: u64,
    key: Key,
}

impl PartialEq for Hashed {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl Eq for Hashed {}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands the precomputed hash of a [`Hashed`] to the map.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; fold anything else anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One upstream call and the requests waiting for it.
pub(crate) struct Flight {
    key: Hashed,
    started: Instant,
    /// The leader (until its future is dropped) plus the followers still waiting.
    waiters: AtomicUsize,
    /// Set (under the map lock) when the leader went away and the work moved
    /// to a task.
    detached: AtomicBool,
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    followers: Vec<oneshot::Sender<Outcome>>,
    /// Set once the work was handed to a task because its leader went away.
    task: Option<AbortHandle>,
}

/// A buffered response, shared by the followers of one flight.
#[derive(Debug)]
pub(crate) struct SharedResponse {
    pub(crate) parts: Parts,
    pub(crate) body: Collected,
}

/// What a follower receives. A follower whose channel closes without a value
/// knows the work panicked.
#[derive(Clone)]
pub(crate) enum Outcome {
    Shared(Arc<SharedResponse>),
    /// Not shareable (over the cap, streaming, personalised): call upstream.
    Release,
    /// The inner service returned an error (given to the leader alone).
    Failed,
}

/// The result of looking a key up.
pub(crate) enum Join {
    Bypass,
    Lead(Publisher),
    Follow(Waiter, oneshot::Receiver<Outcome>),
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while these locks are held by this module, but a
    // poisoned lock must not turn one panic into a panic on every request.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            counters: Counters::new(),
            hasher: RandomState::new(),
            map: Mutex::new(Map {
                entries: HashMap::default(),
                sweep_at: MIN_SWEEP,
                next_sweep: Instant::now(),
            }),
        }
    }

    /// Makes the caller the leader of `key`, a follower of its flight, or
    /// tells it to go upstream alone (hit-for-miss).
    pub(crate) fn join(self: &Arc<Self>, key: Key) -> Join {
        let key = Hashed {
            hash: self.hasher.hash_one(key.as_bytes()),
            key,
        };
        let now = Instant::now();
        let mut map = lock(&self.map);
        match map.entries.get(&key) {
            Some(Entry::Pass(until)) if now < *until => return Join::Bypass,
            Some(Entry::Flight(flight))
                if now.saturating_duration_since(flight.started) < self.config.max_leader_age =>
            {
                // Under the map lock, so a last waiter leaving concurrently
                // sees this one and keeps the work alive.
                flight.waiters.fetch_add(1, Ordering::AcqRel);
                let (tx, rx) = oneshot::channel();
                lock(&flight.state).followers.push(tx);
                let waiter = Waiter {
                    shared: self.clone(),
                    flight: flight.clone(),
                };
                return Join::Follow(waiter, rx);
            }
            // Vacant, expired, or a leader too old to queue behind.
            _ => {}
        }
        let flight = Arc::new(Flight {
            key: key.clone(),
            started: now,
            waiters: AtomicUsize::new(1),
            detached: AtomicBool::new(false),
            state: Mutex::new(FlightState::default()),
        });
        map.insert(key, Entry::Flight(flight.clone()), now, self.sweep_period());
        Join::Lead(Publisher {
            shared: self.clone(),
            flight,
            done: false,
        })
    }

    /// Forgets in-flight `GET`/`HEAD` calls and hit-for-miss markers of
    /// `target` (a key without method, up to its request-header lines).
    pub(crate) fn forget(&self, target: &Key) {
        let mut map = lock(&self.map);
        if map.entries.is_empty() {
            return;
        }
        let target = target.as_bytes();
        map.entries.retain(|key, _| {
            let key = key.key.as_bytes();
            let rest = key
                .strip_prefix(b"GET ")
                .or_else(|| key.strip_prefix(b"HEAD "));
            !rest.is_some_and(|rest| {
                rest.starts_with(target) && matches!(rest.get(target.len()), None | Some(b'\n'))
            })
        });
    }

    /// Removes the hit-for-miss marker `flight` left for its key, if it is
    /// still there: for an outcome that says nothing about the key's next
    /// answer (a gRPC error status).
    pub(crate) fn clear_pass(&self, flight: &Flight) {
        let mut map = lock(&self.map);
        if matches!(map.entries.get(&flight.key), Some(Entry::Pass(_))) {
            map.entries.remove(&flight.key);
        }
    }

    /// The number of keys tracked (in flight or hit-for-miss).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).entries.len()
    }

    /// Removes `flight` from the map if it is still the entry for its key,
    /// leaving a hit-for-miss marker when `pass` says so.
    fn retire(&self, flight: &Arc<Flight>, pass: bool) {
        let mut map = lock(&self.map);
        if map.remove_flight(flight) && pass && map.entries.len() < MAX_TRACKED {
            let now = Instant::now();
            let until = now + self.config.hit_for_miss;
            let period = self.sweep_period();
            map.insert(flight.key.clone(), Entry::Pass(until), now, period);
        }
    }

    fn sweep_period(&self) -> Duration {
        self.config.hit_for_miss.max(Duration::from_secs(1))
    }

    /// The leader's future was dropped before its work finished: the work is
    /// handed to a task when followers still wait, dropped otherwise.
    pub(crate) fn leader_gone<W>(&self, flight: &Arc<Flight>, work: W)
    where
        W: std::future::Future + Send + 'static,
        W::Output: Send + 'static,
    {
        let map = lock(&self.map);
        flight.detached.store(true, Ordering::Relaxed);
        // Decremented under the map lock: no follower can join in between.
        if flight.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            drop(map);
            // Dropping the work drops its publisher, which retires the flight.
            drop(work);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn(work);
                lock(&flight.state).task = Some(task.abort_handle());
            }
            Err(_) => {
                // No runtime (shutting down): followers learn it failed.
                drop(map);
                drop(work);
            }
        }
    }
}

impl Map {
    /// Removes `flight` if it is still the entry for its key (a newer
    /// flight may have replaced it).
    fn remove_flight(&mut self, flight: &Arc<Flight>) -> bool {
        let current = matches!(self.entries.get(&flight.key), Some(Entry::Flight(f)) if Arc::ptr_eq(f, flight));
        if current {
            self.entries.remove(&flight.key);
        }
        current
    }

    fn insert(&mut self, key: Hashed, entry: Entry, now: Instant, period: Duration) {
        // Expired markers are otherwise only replaced on their next lookup.
        // Sweeping when the map doubles and once per period keeps the cost
        // amortised O(1) and the expired markers few.
        if self.entries.len() >= self.sweep_at || now >= self.next_sweep {
            self.entries
                .retain(|_, e| !matches!(e, Entry::Pass(until) if *until <= now));
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
            self.next_sweep = now + period;
        }
        self.entries.insert(key, entry);
    }
}

/// Held by the leader's work: announces the outcome to the followers and
/// retires the flight. Dropped without an outcome (the work panicked or was
/// aborted), it retires the flight and closes the followers' channels.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    flight: Arc<Flight>,
    done: bool,
}

impl Publisher {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Retires the flight without an outcome when no follower waits for it
    /// (the uncontended case: the leader's response then streams through
    /// untouched). Checked under the map lock, so no follower can join in
    /// between.
    pub(crate) fn retire_if_alone(&mut self) -> bool {
        let mut map = lock(&self.shared.map);
        // While the leader waits, the count is the leader plus its followers.
        let alone = !self.flight.detached.load(Ordering::Relaxed)
            && self.flight.waiters.load(Ordering::Acquire) == 1;
        if !alone {
            return false;
        }
        map.remove_flight(&self.flight);
        self.done = true;
        true
    }

    /// Sends `outcome` to every follower; a released key is remembered as
    /// hit-for-miss.
    pub(crate) fn publish(mut self, outcome: Outcome) {
        self.finish(Some(outcome));
    }

    fn finish(&mut self, outcome: Option<Outcome>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.shared
            .retire(&self.flight, matches!(outcome, Some(Outcome::Release)));
        // Retired first: no follower can join after the list is taken.
        let followers = std::mem::take(&mut lock(&self.flight.state).followers);
        if let Some(outcome) = outcome {
            for tx in followers {
                let _ = tx.send(outcome.clone());
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("key", &self.flight.key.key)
            .finish()
    }
}

/// A follower's membership of a flight; leaving as the last waiter drops
/// the work.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    flight: Arc<Flight>,
}

impl Waiter {
    pub(crate) fn on_panic(&self) -> super::PanicOutcome {
        self.shared.config.on_panic
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.flight.waiters.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let task = {
            let mut map = lock(&self.shared.map);
            // A follower may have joined between the decrement and the lock.
            if self.flight.waiters.load(Ordering::Acquire) != 0 {
                return;
            }
            map.remove_flight(&self.flight);
            lock(&self.flight.state).task.take()
        };
        // Nobody waits any more: the detached work is dropped.
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("key", &self.flight.key.key)
            .finish()
    }
}
