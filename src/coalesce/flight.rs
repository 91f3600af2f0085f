//! Leader/follower state: the map of in-flight keys, the flights and their
//! waiters, and the hit-for-miss markers.
//!
//! One lock guards the map and the flights in it; it is never held across an
//! `.await`. A leader left alone retires its flight without it, through the
//! flight's [`Slot`]: the uncontended request locks the map once.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use http::response::Parts;
use metrics::Counter;
use tokio::{sync::oneshot, task::AbortHandle, time::Instant};

use super::layer::Config;
use crate::{
    body::Collected,
    key::{Key, KeyBuf, KeySink, Prehashed},
};

/// The map is swept of expired hit-for-miss markers and idle entries when it
/// doubles past this size, and at least once per hit-for-miss period where
/// the clock is read (a call that waits, a follower, a new marker).
const MIN_SWEEP: usize = 1024;
/// Beyond this many tracked keys no hit-for-miss marker is added: a flood of
/// distinct uncacheable URLs costs bounded memory (the keys just lose the
/// marker and elect leaders again).
pub(crate) const MAX_TRACKED: usize = 1 << 16;
/// Flights that can retire without the lock at one time (more may be in
/// flight: those take the lock to retire).
const SLOTS: usize = 256;

/// State shared by a layer and every service it builds.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    hasher: foldhash::quality::RandomState,
    map: Mutex<Map>,
    /// The retirement word of each flight that can retire without the lock,
    /// by flight id modulo [`SLOTS`].
    slots: Box<[AtomicU64]>,
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
    /// Keyed by the hash of the request key; the full key is compared on a
    /// hash match, and a (rare) colliding key is simply not coalesced.
    entries: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    /// Flights no longer reachable by key (replaced by a younger leader, or
    /// forgotten after a write) whose call still goes on for their waiters,
    /// by flight id.
    displaced: HashMap<u64, Flight, BuildHasherDefault<Prehashed>>,
    next_id: u64,
    sweep_at: usize,
    next_sweep: Instant,
}

struct Entry {
    key: StoredKey,
    state: State,
}

impl Entry {
    fn flight(&self, id: u64) -> Option<&Flight> {
        match &self.state {
            State::Flight(flight) if flight.id == id => Some(flight),
            _ => None,
        }
    }
}

/// A key kept in the map: inline up to `INLINE` bytes (most URLs), so an
/// uncontended leader allocates nothing for it.
enum StoredKey {
    Inline {
        len: u8,
        bytes: [u8; StoredKey::INLINE],
    },
    Heap(Box<[u8]>),
}

impl StoredKey {
    const INLINE: usize = 80;

    fn new(key: &[u8]) -> Self {
        let mut bytes = [0; Self::INLINE];
        match bytes.get_mut(..key.len()) {
            Some(inline) => {
                inline.copy_from_slice(key);
                Self::Inline {
                    len: key.len() as u8,
                    bytes,
                }
            }
            None => Self::Heap(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

enum State {
    /// A call in flight for this key, or one its leader retired alone (see
    /// [`Slot`]), which counts as idle.
    Flight(Flight),
    /// Hit-for-miss: requests for this key go upstream on their own until then.
    Pass(Instant),
    /// Nothing in flight. The entry is kept until the next sweep, so a key
    /// requested again (a hot key) finds its entry without an insertion or
    /// a copy of the key.
    Idle,
}

/// One upstream call and the requests waiting for it. It lives in the map
/// (no allocation of its own: an uncontended leader writes it into its
/// key's entry, and marks it retired through its [`Slot`]), and is found
/// again by its [`FlightId`].
struct Flight {
    id: u64,
    /// When the call first waited (its leader's first `Pending`), or when a
    /// follower first found it, whichever came first: a call that completes
    /// at once never reads the clock.
    started: Option<Instant>,
    followers: Vec<oneshot::Sender<Outcome>>,
    /// Followers still waiting (joined, not yet gone).
    waiting: usize,
    /// The leader went away and the work moved to `task`.
    detached: bool,
    task: Option<AbortHandle>,
    slot: Slot,
}

impl Flight {
    fn new(id: u64, slot: Slot) -> Self {
        Self {
            id,
            started: None,
            followers: Vec::new(),
            waiting: 0,
            detached: false,
            task: None,
            slot,
        }
    }
}

/// How a flight retires.
///
/// A flight whose slot word (in [`Shared`]) was free when it started is
/// `Alone`: its leader may retire it by one compare-and-swap of the word
/// from [`live`] to [`done`], without the lock, leaving the flight in its
/// entry to be found finished (and replaced, or swept) later. Whoever needs
/// the flight to go on (a follower joining, a displacement) first claims
/// the word, under the lock, from `live` to [`held`]: the swap that wins
/// decides, so a leader never retires alone a flight somebody waits for.
/// A `Held` flight retires under the lock, which frees its word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// No word (its word was another running flight's): the lock decides.
    None,
    /// The word is `live(id)` (running, alone) or no longer (retired alone).
    Alone,
    /// The word is `held(id)`: the lock decides.
    Held,
}

/// Slot words: the flight id above two state bits.
const fn live(id: u64) -> u64 {
    id << 2
}
const fn held(id: u64) -> u64 {
    id << 2 | 1
}
const fn done(id: u64) -> u64 {
    id << 2 | 2
}
const DONE: u64 = 2;

/// Where a flight is: the hash of its key and its id (unique per layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlightId {
    hash: u64,
    id: u64,
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
            hasher: Default::default(),
            map: Mutex::new(Map {
                entries: HashMap::default(),
                displaced: HashMap::default(),
                next_id: 0,
                sweep_at: MIN_SWEEP,
                next_sweep: Instant::now(),
            }),
            slots: (0..SLOTS).map(|_| AtomicU64::new(done(0))).collect(),
        }
    }

    fn slot(&self, id: u64) -> &AtomicU64 {
        &self.slots[id as usize % SLOTS]
    }

    /// A new flight (under the lock), with a slot word if its own is free.
    fn start(&self, id: u64) -> Flight {
        Flight::new(id, self.take_slot(id))
    }

    fn take_slot(&self, id: u64) -> Slot {
        let word = self.slot(id);
        // Only the lock holder takes a free word: no race.
        if word.load(Ordering::Relaxed) & DONE != 0 {
            word.store(live(id), Ordering::Relaxed);
            Slot::Alone
        } else {
            Slot::None
        }
    }

    /// Whether `flight` still runs (under the lock); a running flight is
    /// held from then on, so that its leader retires it under the lock.
    fn hold(&self, flight: &mut Flight) -> bool {
        if flight.slot != Slot::Alone {
            return true;
        }
        let word = self.slot(flight.id);
        // Retired alone: its word is `done`, or already another flight's.
        let running = word.load(Ordering::Acquire) == live(flight.id)
            && word
                .compare_exchange(
                    live(flight.id),
                    held(flight.id),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if running {
            flight.slot = Slot::Held;
        }
        running
    }

    /// Whether `flight` still runs, without claiming it (under the lock).
    fn running(&self, flight: &Flight) -> bool {
        flight.slot != Slot::Alone
            || self.slot(flight.id).load(Ordering::Acquire) == live(flight.id)
    }

    /// Frees the word of a flight retired under the lock.
    fn free(&self, flight: &Flight) {
        if flight.slot != Slot::None {
            let word = self.slot(flight.id);
            let current = if flight.slot == Slot::Alone {
                live(flight.id)
            } else {
                held(flight.id)
            };
            let _ = word.compare_exchange(
                current,
                done(flight.id),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Makes the caller (whose request has the key `key`) the leader of its
    /// key, a follower of its flight, or tells it to go upstream alone
    /// (hit-for-miss, or a hash collision with another key in flight).
    ///
    /// One lock acquisition; no allocation unless a new leader's key is too
    /// long to be kept inline, and no clock read unless the key is in flight
    /// or remembered as hit-for-miss.
    pub(crate) fn join(self: &Arc<Self>, key: &[u8]) -> Join {
        let hash = self.hash(key);
        let mut guard = lock(&self.map);
        let map = &mut *guard;
        let id = map.next_id;
        match map.entries.get_mut(&hash) {
            Some(entry) => {
                if entry.key.as_bytes() != key {
                    return Join::Bypass;
                }
                let running = match &mut entry.state {
                    State::Flight(flight) => self.hold(flight),
                    _ => false,
                };
                match &mut entry.state {
                    State::Pass(until) if Instant::now() < *until => return Join::Bypass,
                    State::Flight(flight) if running => {
                        if self.young(flight) {
                            // The first follower starts the age clock if the
                            // leader did not yet.
                            flight.started.get_or_insert_with(Instant::now);
                            flight.waiting += 1;
                            let (tx, rx) = oneshot::channel();
                            flight.followers.push(tx);
                            let waiter = Waiter {
                                shared: self.clone(),
                                flight: FlightId {
                                    hash,
                                    id: flight.id,
                                },
                                armed: true,
                            };
                            return Join::Follow(waiter, rx);
                        }
                        // A leader too old to queue behind: its call goes
                        // on for the followers it has.
                        let old =
                            std::mem::replace(&mut entry.state, State::Flight(self.start(id)));
                        if let State::Flight(old) = old {
                            map.displaced.insert(old.id, old);
                        }
                    }
                    // Retired by its leader alone: nobody ever joined it,
                    // there is nothing to drop.
                    State::Flight(flight) => {
                        flight.id = id;
                        flight.started = None;
                        flight.slot = self.take_slot(id);
                    }
                    // Idle or expired: the entry is reused.
                    _ => entry.state = State::Flight(self.start(id)),
                }
            }
            None => {
                if map.entries.len() >= map.sweep_at {
                    map.sweep(self, Instant::now());
                }
                let entry = Entry {
                    key: StoredKey::new(key),
                    state: State::Flight(self.start(id)),
                };
                map.entries.insert(hash, entry);
            }
        }
        map.next_id += 1;
        Join::Lead(Publisher {
            shared: self.clone(),
            flight: FlightId { hash, id },
            done: false,
        })
    }

    /// Forgets in-flight `GET`/`HEAD` calls and hit-for-miss markers of
    /// `target` (a key without method, up to its request-header lines). The
    /// calls go on for the followers they have; new requests start afresh.
    pub(crate) fn forget(&self, target: &Key) {
        let target = target.as_bytes();
        // Hashed before the lock is taken. Without header lines or a key
        // function the reads' keys are known: two lookups rather than a
        // pass over every entry, under the lock, for each write.
        let reads = self.config.key.keys_are_targets().then(|| {
            [&b"GET "[..], b"HEAD "].map(|method| {
                let mut key = KeyBuf::new();
                key.put(method);
                key.put(target);
                (self.hash(key.as_bytes()), key)
            })
        });
        let mut guard = lock(&self.map);
        let map = &mut *guard;
        if map.entries.is_empty() {
            return;
        }
        let hits: Vec<u64> = match &reads {
            Some(reads) => reads
                .iter()
                .filter(|(hash, key)| {
                    map.entries
                        .get(hash)
                        .is_some_and(|entry| entry.key.as_bytes() == key.as_bytes())
                })
                .map(|(hash, _)| *hash)
                .collect(),
            None => map
                .entries
                .iter()
                .filter(|(_, entry)| {
                    let key = entry.key.as_bytes();
                    let rest = key
                        .strip_prefix(b"GET ")
                        .or_else(|| key.strip_prefix(b"HEAD "));
                    rest.is_some_and(|rest| {
                        rest.starts_with(target)
                            && matches!(rest.get(target.len()), None | Some(b'\n'))
                    })
                })
                .map(|(hash, _)| *hash)
                .collect(),
        };
        for hash in hits {
            if let Some(Entry {
                state: State::Flight(mut flight),
                ..
            }) = map.entries.remove(&hash)
            {
                if self.hold(&mut flight) {
                    map.displaced.insert(flight.id, flight);
                }
            }
        }
    }

    /// The number of keys tracked (in flight or hit-for-miss).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let map = lock(&self.map);
        map.entries
            .values()
            .filter(|e| match &e.state {
                State::Flight(flight) => self.running(flight),
                State::Pass(_) => true,
                State::Idle => false,
            })
            .count()
    }

    /// The number of flights in progress, reachable by key or not.
    #[cfg(test)]
    pub(crate) fn flights(&self) -> usize {
        let map = lock(&self.map);
        let keyed = map
            .entries
            .values()
            .filter(|e| matches!(&e.state, State::Flight(flight) if self.running(flight)))
            .count();
        keyed + map.displaced.len()
    }

    /// foldhash with a per-layer random seed, so URLs cannot be chosen in
    /// advance to collide (a collision would keep a hot key from coalescing).
    fn hash(&self, key: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key);
        hasher.finish()
    }

    /// Whether `flight` still takes followers (younger than the leader age
    /// limit; a flight whose clock has not started is brand new).
    fn young(&self, flight: &Flight) -> bool {
        let now = Instant::now();
        let started = flight.started.unwrap_or(now);
        now.saturating_duration_since(started) < self.config.max_leader_age
    }

    fn sweep_period(&self) -> Duration {
        self.config.hit_for_miss.max(Duration::from_secs(1))
    }

    /// The leader's future was dropped before its work finished: the work is
    /// handed to a task when followers still wait, dropped otherwise.
    pub(crate) fn leader_gone<W>(&self, flight: FlightId, work: W)
    where
        W: std::future::Future + Send + 'static,
        W::Output: Send + 'static,
    {
        let mut map = lock(&self.map);
        let runtime = tokio::runtime::Handle::try_current();
        match (map.flight(flight), runtime) {
            // Under the map lock: no follower can join or leave in between.
            (Some(state), Ok(runtime)) if state.waiting > 0 => {
                state.detached = true;
                state.task = Some(runtime.spawn(work).abort_handle());
            }
            // Nobody waits, or no runtime (shutting down: followers learn it
            // failed). Dropping the work drops its publisher, which retires
            // the flight.
            _ => {
                drop(map);
                drop(work);
            }
        }
    }
}

impl Map {
    fn flight(&mut self, id: FlightId) -> Option<&mut Flight> {
        match self.entries.get_mut(&id.hash) {
            Some(Entry {
                state: State::Flight(flight),
                ..
            }) if flight.id == id.id => Some(flight),
            _ => self.displaced.get_mut(&id.id),
        }
    }

    /// Takes a flight out of the map and frees its slot word. When it was
    /// still reachable by key, its entry becomes `pass` (a hit-for-miss
    /// marker) or idle.
    fn remove_flight(
        &mut self,
        shared: &Shared,
        id: FlightId,
        pass: Option<Instant>,
    ) -> Option<Flight> {
        let flight = match self.entries.get_mut(&id.hash) {
            Some(entry) if entry.flight(id.id).is_some() => {
                let state = pass.map_or(State::Idle, State::Pass);
                match std::mem::replace(&mut entry.state, state) {
                    State::Flight(flight) => flight,
                    _ => unreachable!("checked above"),
                }
            }
            _ => self.displaced.remove(&id.id)?,
        };
        shared.free(&flight);
        Some(flight)
    }

    /// Expired markers and idle entries (flights retired alone among them)
    /// are otherwise only reused on their next lookup. Sweeping when the map doubles, and once per period where
    /// the clock is read anyway, keeps the cost amortised O(1) and the map
    /// within twice its live entries.
    fn sweep(&mut self, shared: &Shared, now: Instant) {
        if self.entries.len() >= self.sweep_at || now >= self.next_sweep {
            self.entries.retain(|_, e| match &e.state {
                State::Flight(flight) => shared.running(flight),
                State::Pass(until) => *until > now,
                State::Idle => false,
            });
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
            self.next_sweep = now + shared.sweep_period();
        }
    }
}

/// Held by the leader's work: announces the outcome to the followers and
/// retires the flight. Dropped without an outcome (the work panicked or was
/// aborted), it retires the flight and closes the followers' channels.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    flight: FlightId,
    done: bool,
}

impl Publisher {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn flight(&self) -> FlightId {
        self.flight
    }

    /// Retires the flight without an outcome when no follower waits for it
    /// (the uncontended case: the leader's response then streams through
    /// untouched). Decided by the flight's slot word, or under the map lock,
    /// so no follower can join in between.
    pub(crate) fn retire_if_alone(&mut self) -> bool {
        if !self.retire_alone() {
            let shared = &*self.shared;
            let mut map = lock(&shared.map);
            if map
                .flight(self.flight)
                .is_some_and(|flight| flight.detached || flight.waiting > 0)
            {
                return false;
            }
            // Alone; or gone already: the last follower left a detached
            // flight and its work is being aborted.
            map.remove_flight(shared, self.flight, None);
        }
        self.done = true;
        true
    }

    /// The common case, without the lock: nobody joined the flight since
    /// it started (its slot word is still `live`), and nobody can now.
    fn retire_alone(&self) -> bool {
        let id = self.flight.id;
        self.shared
            .slot(id)
            .compare_exchange(live(id), done(id), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The call waits (its first `Pending`): starts the flight's age clock
    /// unless a follower did, so a call that completes at once never reads
    /// the clock.
    pub(crate) fn waiting(&self) {
        let now = Instant::now();
        let mut map = lock(&self.shared.map);
        if let Some(flight) = map.flight(self.flight) {
            flight.started.get_or_insert(now);
        }
        map.sweep(&self.shared, now);
    }

    /// Sends `outcome` to every follower; a released key is remembered as
    /// hit-for-miss.
    pub(crate) fn publish(&mut self, outcome: Outcome) {
        let pass = matches!(outcome, Outcome::Release);
        self.finish(Some(outcome), pass);
    }

    /// Releases the followers to make their own calls; `remember` leaves a
    /// hit-for-miss marker on the key. Without one (an error answer, which
    /// says nothing about the key's next answer) the next requests for the
    /// key are coalesced again.
    pub(crate) fn release(&mut self, remember: bool) {
        self.finish(Some(Outcome::Release), remember);
    }

    fn finish(&mut self, outcome: Option<Outcome>, pass: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // Without a marker to leave, a flight nobody joined retires without
        // the lock.
        if !pass && self.retire_alone() {
            return;
        }
        let followers = {
            let mut map = lock(&self.shared.map);
            // A released key is remembered as hit-for-miss while the map is
            // within its bound (beyond it, the key just elects leaders).
            let now = pass.then(Instant::now);
            if let Some(now) = now {
                map.sweep(&self.shared, now);
            }
            let until = now
                .filter(|_| map.entries.len() < MAX_TRACKED)
                .map(|now| now + self.shared.config.hit_for_miss);
            let Some(flight) = map.remove_flight(&self.shared, self.flight, until) else {
                return;
            };
            // Retired first: no follower can join after the list is taken.
            flight.followers
        };
        if let Some(outcome) = outcome {
            for tx in followers {
                let _ = tx.send(outcome.clone());
            }
        }
    }
}

impl Drop for Publisher {
    #[inline]
    fn drop(&mut self) {
        // Retired already on the common path: nothing to call.
        if !self.done {
            self.finish(None, false);
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("flight", &self.flight)
            .finish()
    }
}

/// A follower's membership of a flight; leaving as the last waiter of a
/// flight whose leader went away drops the work.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    flight: FlightId,
    /// Cleared once the follower received its outcome: the flight is
    /// retired, there is nothing to leave.
    armed: bool,
}

impl Waiter {
    pub(crate) fn on_panic(&self) -> super::PanicOutcome {
        self.shared.config.on_panic
    }

    /// The follower received its flight's outcome (or saw its channel
    /// closed): the flight is retired, so leaving takes no lock.
    pub(crate) fn finished(mut self) {
        self.armed = false;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let task = {
            let mut map = lock(&self.shared.map);
            let Some(flight) = map.flight(self.flight) else {
                return;
            };
            flight.waiting -= 1;
            if flight.waiting > 0 || !flight.detached {
                return;
            }
            // The leader went away and nobody waits any more.
            map.remove_flight(&self.shared, self.flight, None)
                .and_then(|flight| flight.task)
        };
        // The detached work is dropped.
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("flight", &self.flight)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"GET http://example.com/a";

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(Config::default()))
    }

    fn lead(shared: &Arc<Shared>, key: &[u8]) -> Publisher {
        match shared.join(key) {
            Join::Lead(publisher) => publisher,
            _ => panic!("expected to lead"),
        }
    }

    fn follow(shared: &Arc<Shared>, key: &[u8]) -> (Waiter, oneshot::Receiver<Outcome>) {
        match shared.join(key) {
            Join::Follow(waiter, rx) => (waiter, rx),
            _ => panic!("expected to follow"),
        }
    }

    fn entries(shared: &Shared) -> usize {
        lock(&shared.map).entries.len()
    }

    #[test]
    fn a_key_colliding_with_another_in_flight_goes_upstream_alone() {
        let shared = shared();
        let other = b"GET http://example.com/b";
        let hash = shared.hash(KEY);
        lock(&shared.map).entries.insert(
            hash,
            Entry {
                key: StoredKey::new(other),
                state: State::Flight(Flight::new(u64::MAX, Slot::None)),
            },
        );
        assert!(matches!(shared.join(KEY), Join::Bypass));
    }

    #[test]
    fn keys_are_kept_inline_or_on_the_heap_and_compared_in_full() {
        for len in [
            0,
            1,
            StoredKey::INLINE - 1,
            StoredKey::INLINE,
            StoredKey::INLINE + 1,
            4096,
        ] {
            let key = vec![b'k'; len];
            let stored = StoredKey::new(&key);
            assert_eq!(stored.as_bytes(), &key[..]);
            assert_eq!(
                matches!(stored, StoredKey::Heap(_)),
                len > StoredKey::INLINE
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_leader_leaves_an_idle_entry_that_the_next_request_reuses() {
        let shared = shared();
        let mut publisher = lead(&shared, KEY);
        assert!(publisher.retire_if_alone());
        drop(publisher);
        assert_eq!((shared.len(), entries(&shared)), (0, 1));
        // The key leads again, in the same entry.
        let publisher = lead(&shared, KEY);
        assert_eq!((shared.len(), entries(&shared)), (1, 1));
        drop(publisher);
        // Dropped without an outcome (a panic): the key is cleared.
        assert_eq!((shared.len(), shared.flights()), (0, 0));
        // The periodic sweep drops idle entries.
        tokio::time::advance(Duration::from_secs(10)).await;
        lock(&shared.map).sweep(&shared, Instant::now());
        assert_eq!(entries(&shared), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_keeps_a_lone_leader_from_retiring_alone() {
        let shared = shared();
        let mut publisher = lead(&shared, KEY);
        let (waiter, mut rx) = follow(&shared, KEY);
        assert!(!publisher.retire_if_alone());
        publisher.publish(Outcome::Failed);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Failed)));
        waiter.finished();
        assert_eq!((shared.len(), shared.flights()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_leaves_a_marker_only_when_asked_to() {
        for remember in [true, false] {
            let shared = shared();
            let mut publisher = lead(&shared, KEY);
            let (waiter, mut rx) = follow(&shared, KEY);
            publisher.release(remember);
            assert!(matches!(rx.try_recv(), Ok(Outcome::Release)));
            waiter.finished();
            assert_eq!(shared.len(), usize::from(remember));
            let next = shared.join(KEY);
            assert_eq!(matches!(next, Join::Bypass), remember);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn displaced_flights_still_answer_their_followers_then_go() {
        let shared = shared();
        let mut first = lead(&shared, KEY);
        let (waiter, mut rx) = follow(&shared, KEY);
        // A write to the target displaces the flight: new requests lead anew.
        shared.forget(&Key::from("http://example.com/a"));
        let mut second = lead(&shared, KEY);
        assert_eq!(shared.flights(), 2);
        first.publish(Outcome::Release);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Release)));
        drop(waiter);
        assert_eq!(shared.flights(), 1);
        // The displaced flight's release left no hit-for-miss marker on the
        // key, which belongs to the second flight.
        assert!(second.retire_if_alone());
        assert_eq!((shared.len(), shared.flights()), (0, 0));
    }

    #[test]
    fn a_write_forgets_the_reads_of_its_target_and_no_others() {
        let with_headers = Config {
            key: crate::key::KeyOptions::new().header(http::header::ACCEPT_LANGUAGE),
            ..Config::default()
        };
        // Keys as built (looked up) and with header lines (searched for).
        for (config, line) in [
            (Config::default(), ""),
            (with_headers, "\naccept-language:"),
        ] {
            let shared = Arc::new(Shared::new(config));
            let key = |read: &str| format!("{read}{line}").into_bytes();
            let reads = ["GET http://example.com/a", "HEAD http://example.com/a"];
            let others = [
                "GET http://example.com/ab",
                "GET http://example.com/a/b",
                "GET http://example.org/a",
            ];
            let mut publishers: Vec<_> = reads
                .iter()
                .chain(&others)
                .map(|read| lead(&shared, &key(read)))
                .collect();
            shared.forget(&Key::from("http://example.com/a"));
            for read in reads {
                assert!(matches!(shared.join(&key(read)), Join::Lead(_)), "{read}");
            }
            for read in others {
                let (_waiter, _rx) = follow(&shared, &key(read));
            }
            for publisher in &mut publishers {
                publisher.publish(Outcome::Release);
            }
        }
    }

    #[test]
    fn flights_beyond_the_slots_retire_under_the_lock() {
        let shared = shared();
        let keys: Vec<Vec<u8>> = (0..SLOTS + 10)
            .map(|i| format!("GET http://example.com/{i}").into_bytes())
            .collect();
        let mut publishers: Vec<_> = keys.iter().map(|key| lead(&shared, key)).collect();
        assert_eq!(shared.flights(), SLOTS + 10);
        // A flight without a slot word still takes followers.
        let (waiter, mut rx) = follow(&shared, &keys[SLOTS + 1]);
        assert!(!publishers[SLOTS + 1].retire_if_alone());
        publishers[SLOTS + 1].publish(Outcome::Failed);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Failed)));
        waiter.finished();
        for (i, publisher) in publishers.iter_mut().enumerate() {
            if i != SLOTS + 1 {
                assert!(publisher.retire_if_alone());
            }
        }
        assert_eq!((shared.len(), shared.flights()), (0, 0));
        // Every word is free again: the next leaders retire without the lock.
        drop(publishers);
        let publisher = lead(&shared, KEY);
        assert!(publisher.retire_alone());
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_lone_flight_leaves_nothing_behind() {
        let shared = shared();
        let mut publisher = lead(&shared, KEY);
        shared.forget(&Key::from("http://example.com/a"));
        assert_eq!(shared.flights(), 1);
        // Displaced, it retires under the lock, out of the displaced map.
        assert!(publisher.retire_if_alone());
        assert_eq!(shared.flights(), 0);
        assert!(lock(&shared.map).displaced.is_empty());
    }

    #[test]
    fn a_follower_and_a_lone_retire_never_both_win() {
        // The leader retires without the lock while another thread joins
        // under it: either the follower is answered, or it leads itself.
        let shared = shared();
        for _ in 0..2_000 {
            let mut publisher = lead(&shared, KEY);
            let joining = {
                let shared = shared.clone();
                std::thread::spawn(move || shared.join(KEY))
            };
            let alone = publisher.retire_if_alone();
            match joining.join().unwrap() {
                Join::Follow(waiter, mut rx) => {
                    assert!(!alone, "a follower joined a retired flight");
                    publisher.publish(Outcome::Failed);
                    assert!(matches!(rx.try_recv(), Ok(Outcome::Failed)));
                    waiter.finished();
                }
                Join::Lead(mut next) => {
                    assert!(alone, "a second leader while the first runs");
                    assert!(next.retire_if_alone());
                }
                Join::Bypass => panic!("no marker, no collision"),
            }
            drop(publisher);
            assert_eq!((shared.len(), shared.flights()), (0, 0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_age_counts_from_the_first_wait_or_follower() {
        let age = Config::default().max_leader_age;
        // A call that waited is too old to follow once past the age limit.
        let shared = shared();
        let publisher = lead(&shared, KEY);
        publisher.waiting();
        tokio::time::advance(age).await;
        let replacing = lead(&shared, KEY);
        assert_eq!(shared.flights(), 2);
        drop((publisher, replacing));
        assert_eq!(shared.flights(), 0);

        // A call that has not waited yet (not polled) starts its clock with
        // its first follower.
        let shared = self::shared();
        let publisher = lead(&shared, KEY);
        tokio::time::advance(age).await;
        let (first, _rx) = follow(&shared, KEY);
        tokio::time::advance(age / 2).await;
        let (second, _rx2) = follow(&shared, KEY);
        tokio::time::advance(age / 2).await;
        let replacing = lead(&shared, KEY);
        drop((publisher, first, second, replacing));
        assert_eq!(shared.flights(), 0);
    }
}
