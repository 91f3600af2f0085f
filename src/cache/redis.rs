//! The shared second tier: entries and invalidations in Redis, behind the
//! in-process tier.

use std::{
    fmt,
    future::{poll_fn, Future},
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    task::Poll,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_core::Stream;
use metrics::Counter;
use redis::{aio::ConnectionManager, Client, IntoConnectionInfo, RedisError};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{timeout, Instant},
};

use super::{
    codec,
    store::{path_of, Entry, Fetch, MemoryStore, Purge, Store, Variant},
};
use crate::key::{Key, KeyRef};

/// A shared cache tier on Redis, for [`CacheLayer::redis`](super::CacheLayer::redis).
///
/// Built from a URL ([`open`](Self::open)) or a [`redis::Client`]
/// ([`new`](Self::new)); the connection is made on first use, from inside
/// the Tokio runtime, and kept (reconnecting) by the `redis` crate's
/// [`ConnectionManager`]. See the [module docs](crate::cache#shared-tier-on-redis).
#[derive(Clone)]
pub struct RedisTier {
    client: Client,
    prefix: String,
    timeout: Duration,
    max_body_size: usize,
    max_ttl: Duration,
    failures: u32,
    open_for: Duration,
    max_queued: usize,
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_body_size", &self.max_body_size)
            .field("max_ttl", &self.max_ttl)
            .field("failures", &self.failures)
            .field("open_for", &self.open_for)
            .field("max_queued", &self.max_queued)
            .finish()
    }
}

impl RedisTier {
    /// A tier on the server at `url` (e.g. `redis://127.0.0.1:6379/0`).
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL. Nothing is connected yet.
    pub fn open(url: impl IntoConnectionInfo) -> Result<Self, RedisError> {
        Client::open(url).map(Self::new)
    }

    /// A tier on the server `client` points at, with the defaults: prefix
    /// `tower-perf:`, 50 ms timeout per call, bodies up to 512 KiB, entries
    /// kept a day at most, the circuit opening for 5 s after 5 failures in a
    /// row, at most 1024 writes queued.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prefix: "tower-perf:".into(),
            timeout: Duration::from_millis(50),
            max_body_size: 512 * 1024,
            max_ttl: Duration::from_secs(24 * 60 * 60),
            failures: 5,
            open_for: Duration::from_secs(5),
            max_queued: 1024,
        }
    }

    /// The prefix of every Redis key and of the invalidation channel
    /// (`{prefix}purge`). Caches that share a prefix share entries and
    /// purges; give each application its own. [`CacheHandle::purge_all`]
    /// deletes every key under the prefix: an empty prefix means the whole
    /// database.
    ///
    /// [`CacheHandle::purge_all`]: super::CacheHandle::purge_all
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long any one Redis call may take before it counts as a failure
    /// (a miss for a read). Default 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest body written to Redis (default 512 KiB); larger ones
    /// stay in process only.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// The longest an entry is kept in Redis (default a day), whatever its
    /// freshness; tag sets are kept this long after their last write.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// After `failures` failed calls in a row, Redis is not called for
    /// `open_for` (reads are misses, writes are dropped); then one call tries
    /// again. Default 5 failures, 5 s.
    pub fn circuit(mut self, failures: u32, open_for: Duration) -> Self {
        self.failures = failures.max(1);
        self.open_for = open_for;
        self
    }

    /// The most writes waiting to be sent (default 1024); past it new
    /// writes are dropped (purges never are).
    pub fn max_queued_writes(mut self, writes: usize) -> Self {
        self.max_queued = writes;
        self
    }

    /// The store: `l1` in front of this tier.
    pub(crate) fn store(&self, l1: MemoryStore) -> Arc<dyn Store> {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Arc::new(RedisStore(Arc::new(Inner {
            tier: self.clone(),
            l1,
            id: hasher.finish(),
            started: OnceLock::new(),
            circuit: Circuit::default(),
            generation: AtomicU64::new(0),
            purging: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        })))
    }
}

/// The in-process tier in front of Redis.
#[derive(Debug)]
struct RedisStore(Arc<Inner>);

struct Inner {
    tier: RedisTier,
    l1: MemoryStore,
    /// Tells this instance's purge messages from others'.
    id: u64,
    /// Connection and background tasks, started on first use in a runtime.
    started: OnceLock<Option<Started>>,
    circuit: Circuit,
    /// Bumped by every purge: a read that saw it change fills nothing.
    generation: AtomicU64,
    /// Purges not yet applied to Redis: reads skip Redis meanwhile, so a
    /// purge is never undone by a read of what it removes.
    purging: AtomicUsize,
    queued: AtomicUsize,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("tier", &self.tier)
            .field("l1", &self.l1)
            .finish()
    }
}

struct Started {
    conn: ConnectionManager,
    ops: mpsc::UnboundedSender<Op>,
    /// Whether the invalidation subscription is listening.
    subscribed: watch::Receiver<bool>,
    metrics: Metrics,
    /// Dropped with the store: stops the subscriber.
    _stop: oneshot::Sender<()>,
}

struct Metrics {
    hits: Counter,
    misses: Counter,
    skipped: Counter,
    get_errors: Counter,
    put_errors: Counter,
    purge_errors: Counter,
    subscribe_errors: Counter,
}

impl Metrics {
    fn new() -> Self {
        let error = |op: &'static str| metrics::counter!("cache.l2.errors", "op" => op);
        Self {
            hits: metrics::counter!("cache.l2.hits"),
            misses: metrics::counter!("cache.l2.misses"),
            skipped: metrics::counter!("cache.l2.skipped"),
            get_errors: error("get"),
            put_errors: error("put"),
            purge_errors: error("purge"),
            subscribe_errors: error("subscribe"),
        }
    }
}

/// Work for the writer task, done in order.
enum Op {
    Put(Key, Entry),
    Purge(Purge),
    Flush(oneshot::Sender<()>),
}

impl Inner {
    /// The connection and tasks; `None` outside a Tokio runtime.
    fn started(self: &Arc<Self>) -> Option<&Started> {
        if let Some(started) = self.started.get() {
            return started.as_ref();
        }
        // Connecting spawns tasks: only from inside a runtime.
        tokio::runtime::Handle::try_current().ok()?;
        self.started.get_or_init(|| self.start()).as_ref()
    }

    fn start(self: &Arc<Self>) -> Option<Started> {
        let tier = &self.tier;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(tier.timeout))
            .set_response_timeout(Some(tier.timeout))
            .set_number_of_retries(1);
        let metrics = Metrics::new();
        let conn = match ConnectionManager::new_lazy_with_config(tier.client.clone(), config) {
            Ok(conn) => conn,
            Err(_) => {
                metrics.get_errors.increment(1);
                return None;
            }
        };
        let (ops, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(write(Arc::downgrade(self), conn.clone(), rx));
        tokio::spawn(subscribe(Arc::downgrade(self), subscribed_tx, stopped));
        Some(Started {
            conn,
            ops,
            subscribed,
            metrics,
            _stop: stop,
        })
    }

    fn entry_name(&self, key: &[u8]) -> Vec<u8> {
        [self.tier.prefix.as_bytes(), b"e:", key].concat()
    }

    fn tag_name(&self, tag: &[u8]) -> Vec<u8> {
        [self.tier.prefix.as_bytes(), b"t:", tag].concat()
    }

    fn channel(&self) -> String {
        format!("{}purge", self.tier.prefix)
    }

    /// Runs one Redis call under the timeout, feeding the circuit.
    async fn call<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
        cmd: impl FnOnce() -> redis::Pipeline,
        errors: &Counter,
    ) -> Option<T> {
        let pipe = cmd();
        match timeout(self.tier.timeout, pipe.query_async::<T>(conn)).await {
            Ok(Ok(value)) => {
                self.circuit.success();
                Some(value)
            }
            _ => {
                errors.increment(1);
                self.circuit.failure(&self.tier);
                None
            }
        }
    }

    async fn get(self: Arc<Self>, key: Key, generation: u64) -> Option<Entry> {
        let started = self.started()?;
        let (mut conn, metrics) = (started.conn.clone(), &started.metrics);
        let name = self.entry_name(key.as_bytes());
        let build = || {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(name);
            pipe
        };
        let (value,): (Option<Vec<u8>>,) = self.call(&mut conn, build, &metrics.get_errors).await?;
        let entry = value.and_then(|bytes| {
            codec::decode_entry(Bytes::from(bytes), Instant::now(), SystemTime::now()).ok()
        });
        let Some(entry) = entry else {
            metrics.misses.increment(1);
            return None;
        };
        metrics.hits.increment(1);
        // A purge since the read began may have removed this entry.
        if self.generation.load(Ordering::Acquire) != generation {
            return None;
        }
        self.l1.insert(key, entry.clone());
        Some(entry)
    }

    /// Writes an entry with expiry = remaining freshness + stale allowance;
    /// what cannot be stored removes the older entry.
    async fn put(&self, conn: &mut ConnectionManager, metrics: &Metrics, key: Key, entry: Entry) {
        let now = Instant::now();
        let keep: Vec<Arc<Variant>> = entry
            .iter()
            .filter(|v| v.body.data.len() <= self.tier.max_body_size)
            .cloned()
            .collect();
        let ttl = keep
            .iter()
            .map(|v| expiry(v, now))
            .max()
            .unwrap_or_default()
            .min(self.tier.max_ttl);
        let name = self.entry_name(key.as_bytes());
        let build = || {
            let mut pipe = redis::pipe();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if ttl_ms == 0 {
                pipe.cmd("DEL").arg(&name).ignore();
                return pipe;
            }
            let bytes = codec::encode_entry(&keep, now, SystemTime::now());
            pipe.cmd("SET")
                .arg(&name)
                .arg(bytes)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            let max_ttl = u64::try_from(self.tier.max_ttl.as_millis()).unwrap_or(u64::MAX);
            let mut tags: Vec<&Bytes> = keep.iter().flat_map(|v| v.tags.iter()).collect();
            tags.sort();
            tags.dedup();
            for tag in tags {
                let set = self.tag_name(tag);
                pipe.cmd("SADD").arg(&set).arg(&name).ignore();
                pipe.cmd("PEXPIRE").arg(&set).arg(max_ttl).ignore();
            }
            pipe
        };
        let _: Option<()> = self.call(conn, build, &metrics.put_errors).await;
    }

    /// Removes what `purge` names from Redis, then tells other instances.
    async fn purge(&self, conn: &mut ConnectionManager, metrics: &Metrics, purge: &Purge) {
        let errors = &metrics.purge_errors;
        let entries = self.entry_name(b"");
        match purge {
            Purge::Key(key) => {
                let name = self.entry_name(key.as_bytes());
                let _: Option<()> = self.call(conn, || del(vec![name]), errors).await;
            }
            Purge::Tag(tag) => {
                let set = self.tag_name(tag);
                let smembers = || {
                    let mut pipe = redis::pipe();
                    pipe.cmd("SMEMBERS").arg(&set);
                    pipe
                };
                if let Some((mut names,)) =
                    self.call::<(Vec<Vec<u8>>,)>(conn, smembers, errors).await
                {
                    names.push(set.clone());
                    let _: Option<()> = self.call(conn, || del(names), errors).await;
                }
            }
            Purge::Prefix(prefix) => {
                let pattern = [glob_escape(&[&entries, prefix]), b"*".to_vec()].concat();
                self.scan_delete(conn, errors, pattern, |_| true).await;
            }
            Purge::PathPrefix(prefix) => {
                let pattern = [
                    glob_escape(&[&entries]),
                    b"*".to_vec(),
                    glob_escape(&[prefix]),
                    b"*".to_vec(),
                ]
                .concat();
                let skip = entries.len();
                let matches = |name: &[u8]| path_of(&name[skip..]).starts_with(prefix);
                self.scan_delete(conn, errors, pattern, matches).await;
            }
            Purge::All => {
                let pattern = [glob_escape(&[self.tier.prefix.as_bytes()]), b"*".to_vec()].concat();
                self.scan_delete(conn, errors, pattern, |_| true).await;
            }
        }
        let message = codec::encode_purge(self.id, purge);
        let channel = self.channel();
        let publish = || {
            let mut pipe = redis::pipe();
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
            pipe
        };
        let _: Option<()> = self.call(conn, publish, errors).await;
    }

    /// Deletes the keys matching a `SCAN` pattern for which `keep` holds.
    async fn scan_delete(
        &self,
        conn: &mut ConnectionManager,
        errors: &Counter,
        pattern: Vec<u8>,
        matches: impl Fn(&[u8]) -> bool,
    ) {
        let mut cursor = 0u64;
        loop {
            let scan = || {
                let mut pipe = redis::pipe();
                pipe.cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                pipe
            };
            let Some(((next, names),)) = self
                .call::<((u64, Vec<Vec<u8>>),)>(conn, scan, errors)
                .await
            else {
                return;
            };
            let names: Vec<_> = names.into_iter().filter(|n| matches(n)).collect();
            if !names.is_empty() {
                let _: Option<()> = self.call(conn, || del(names), errors).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// Applies a purge another instance published.
    fn apply(&self, message: Bytes) {
        if let Ok((origin, purge)) = codec::decode_purge(message) {
            if origin != self.id {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.l1.purge(purge);
            }
        }
    }
}

fn del(names: Vec<Vec<u8>>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(names).ignore();
    pipe
}

/// The bytes, with Redis glob metacharacters escaped.
fn glob_escape(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in parts.iter().flat_map(|p| p.iter()) {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// How long a variant is worth keeping: what is left of its freshness plus
/// the stale-* window it may still be served in.
fn expiry(v: &Variant, now: Instant) -> Duration {
    let cc = &v.cc;
    let fresh = v.lifetime.saturating_sub(v.age(now));
    let forbids_stale =
        cc.no_cache || cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    let stale = if forbids_stale {
        0
    } else {
        cc.stale_while_revalidate
            .max(cc.stale_if_error)
            .unwrap_or(0)
    };
    fresh.saturating_add(Duration::from_secs(stale))
}

/// Sends writes and purges to Redis in the order they were made.
async fn write(
    inner: Weak<Inner>,
    mut conn: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    while let Some(op) = ops.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(Some(started)) = inner.started.get() else {
            return;
        };
        let metrics = &started.metrics;
        match op {
            Op::Put(key, entry) => {
                inner.queued.fetch_sub(1, Ordering::AcqRel);
                if inner.circuit.allow(&inner.tier) {
                    inner.put(&mut conn, metrics, key, entry).await;
                } else {
                    metrics.skipped.increment(1);
                }
            }
            Op::Purge(purge) => {
                if inner.circuit.allow(&inner.tier) {
                    inner.purge(&mut conn, metrics, &purge).await;
                } else {
                    metrics.purge_errors.increment(1);
                }
                inner.purging.fetch_sub(1, Ordering::AcqRel);
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Listens for other instances' purges and applies them in process. After
/// the subscription was lost, purges may have been missed: the in-process
/// tier is cleared when it is back.
async fn subscribe(
    inner: Weak<Inner>,
    subscribed: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut lost = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (tier, channel) = (strong.tier.clone(), strong.channel());
        let connect = async {
            let mut pubsub = strong.tier.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match timeout(tier.timeout.max(Duration::from_millis(500)), connect).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                if let Some(Some(started)) = strong.started.get() {
                    started.metrics.subscribe_errors.increment(1);
                }
                drop(strong);
                lost = true;
                tokio::time::sleep(tier.open_for.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        if lost {
            strong.generation.fetch_add(1, Ordering::AcqRel);
            strong.l1.purge(Purge::All);
        }
        drop(strong);
        subscribed.send_replace(true);
        let mut messages = pubsub.into_on_message();
        // Messages until the connection or the store goes.
        let ended = poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            loop {
                match Pin::new(&mut messages).poll_next(cx) {
                    Poll::Ready(Some(msg)) => match inner.upgrade() {
                        Some(inner) => inner.apply(Bytes::copy_from_slice(msg.get_payload_bytes())),
                        None => return Poll::Ready(true),
                    },
                    Poll::Ready(None) => return Poll::Ready(false),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        subscribed.send_replace(false);
        if ended {
            return;
        }
        lost = true;
    }
}

impl Store for RedisStore {
    fn get(&self, key: KeyRef<'_>) -> Option<Entry> {
        self.0.l1.get(key)
    }

    fn insert(&self, key: Key, entry: Entry) {
        self.0.l1.insert(key.clone(), entry.clone());
        let inner = &self.0;
        let Some(started) = inner.started() else {
            return;
        };
        if inner.queued.fetch_add(1, Ordering::AcqRel) >= inner.tier.max_queued {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            started.metrics.put_errors.increment(1);
            return;
        }
        if started.ops.send(Op::Put(key, entry)).is_err() {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn purge(&self, purge: Purge) {
        let inner = &self.0;
        inner.generation.fetch_add(1, Ordering::AcqRel);
        inner.l1.purge(purge.clone());
        let Some(started) = inner.started() else {
            return;
        };
        inner.purging.fetch_add(1, Ordering::AcqRel);
        if started.ops.send(Op::Purge(purge)).is_err() {
            inner.purging.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn weighted_size(&self) -> u64 {
        self.0.l1.weighted_size()
    }

    fn entry_count(&self) -> u64 {
        self.0.l1.entry_count()
    }

    fn fetch(&self, key: KeyRef<'_>) -> Option<Fetch> {
        let inner = &self.0;
        let started = inner.started()?;
        if inner.purging.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !inner.circuit.allow(&inner.tier) {
            started.metrics.skipped.increment(1);
            return None;
        }
        let generation = inner.generation.load(Ordering::Acquire);
        Some(Box::pin(inner.clone().get(key.to_key(), generation)))
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let Some(started) = inner.started() else {
                return;
            };
            let mut subscribed = started.subscribed.clone();
            let wait = inner.tier.timeout.max(Duration::from_secs(1));
            let _ = timeout(wait, subscribed.wait_for(|&s| s)).await;
            let (done, flushed) = oneshot::channel();
            if started.ops.send(Op::Flush(done)).is_ok() {
                let _ = flushed.await;
            }
        })
    }
}

/// Stops calling Redis for a while after repeated failures.
#[derive(Debug, Default)]
struct Circuit {
    failures: AtomicU32,
    /// When the circuit opened, if it is open.
    open: Mutex<Option<Instant>>,
}

impl Circuit {
    /// Whether to call Redis now: closed, or open long enough for one
    /// call to try again (the next ones wait for its outcome).
    fn allow(&self, tier: &RedisTier) -> bool {
        if self.failures.load(Ordering::Acquire) < tier.failures {
            return true;
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *open {
            Some(since) if now.saturating_duration_since(since) < tier.open_for => false,
            _ => {
                // Half open: this call tries; others wait another period.
                *open = Some(now);
                true
            }
        }
    }

    fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) != 0 {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn failure(&self, tier: &RedisTier) {
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 == tier.failures {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    }

    #[cfg(test)]
    fn is_open(&self, tier: &RedisTier) -> bool {
        self.failures.load(Ordering::Acquire) >= tier.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn circuit_opens_after_failures_and_half_opens() {
        let tier = RedisTier::open("redis://127.0.0.1:1/")
            .unwrap()
            .circuit(3, Duration::from_secs(5));
        let circuit = Circuit::default();
        for _ in 0..3 {
            assert!(circuit.allow(&tier));
            circuit.failure(&tier);
        }
        assert!(circuit.is_open(&tier));
        assert!(!circuit.allow(&tier));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(circuit.allow(&tier), "one call tries again");
        assert!(!circuit.allow(&tier), "the others wait for it");
        circuit.failure(&tier);
        assert!(!circuit.allow(&tier), "a failed try keeps it open");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(circuit.allow(&tier));
        circuit.success();
        assert!(circuit.allow(&tier) && circuit.allow(&tier), "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_remaining_freshness_plus_the_stale_window() {
        let expiry_of = |cc: &str, age: u64| {
            let mut headers = http::HeaderMap::new();
            headers.insert("cache-control", cc.parse().unwrap());
            let cc = super::super::policy::ResponseCc::parse(&headers);
            let v = Variant {
                status: http::StatusCode::OK,
                headers,
                body: Default::default(),
                vary: Box::default(),
                lifetime: Duration::from_secs(cc.max_age.unwrap_or(0)),
                cc,
                initial_age: Duration::from_secs(age),
                response_time: Instant::now(),
                tags: Box::default(),
                refreshing: Default::default(),
                hit_headers: Default::default(),
            };
            expiry(&v, Instant::now()).as_secs()
        };
        assert_eq!(expiry_of("max-age=60", 10), 50);
        assert_eq!(expiry_of("max-age=60", 100), 0);
        assert_eq!(expiry_of("max-age=60, stale-while-revalidate=30", 10), 80);
        assert_eq!(
            expiry_of(
                "max-age=60, stale-if-error=90, stale-while-revalidate=30",
                70
            ),
            90
        );
        assert_eq!(
            expiry_of("max-age=60, must-revalidate, stale-if-error=90", 10),
            50
        );
        assert_eq!(expiry_of("max-age=60, no-cache, stale-if-error=90", 0), 60);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape(&[b"a*b", b"[?]\\"]), b"a\\*b\\[\\?\\]\\\\");
    }
}
