//! What the cache stores and where: a stored response (`Variant`), the
//! variants of one key (`Entry`), and the store behind a small trait: the
//! in-process cache alone, or with a shared second tier (Redis).

use std::{
    fmt,
    future::Future,
    hash::BuildHasherDefault,
    pin::Pin,
    sync::{atomic::AtomicBool, Arc, RwLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header::AGE, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::policy::{self, ResponseCc};
use crate::{
    body::Collected,
    key::{Key, KeyRef, Prehashed},
};

/// A stored response, with what serving and revalidating it needs.
#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Collected,
    /// The selecting request headers and their normalised values.
    pub(crate) vary: Box<[(HeaderName, Option<Bytes>)]>,
    pub(crate) cc: ResponseCc,
    pub(crate) lifetime: Duration,
    /// The corrected initial age (RFC 9111 §4.2.3).
    pub(crate) initial_age: Duration,
    pub(crate) response_time: Instant,
    pub(crate) tags: Box<[Bytes]>,
    /// Set while one stale-while-revalidate refresh is in flight.
    pub(crate) refreshing: AtomicBool,
    /// The headers of the last plain hit (`Age` and `Cache-Status` set), by
    /// its age in seconds and the serving layer's settings: every hit within
    /// that second copies them.
    pub(crate) hit_headers: Memo<(u64, usize), Arc<HeaderMap>>,
}

/// The value last made for a key, handed to the next caller asking for the
/// same key: what many responses repeat (a `Cache-Status` value, a hit's
/// header map) is shared instead of made anew. Readers share the lock
/// (a hot key's hits do not exclude each other); nothing ever waits: while
/// the value is being replaced, callers make their own.
#[derive(Debug)]
pub(crate) struct Memo<K, V>(RwLock<Option<(K, V)>>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Self(RwLock::new(None))
    }
}

impl<K: PartialEq, V: Clone> Memo<K, V> {
    /// The value for `key`: the last one if it was made for `key`, else `make()`.
    pub(crate) fn get(&self, key: K, make: impl FnOnce() -> V) -> V {
        if let Ok(slot) = self.0.try_read() {
            if let Some((made_for, value)) = &*slot {
                if *made_for == key {
                    return value.clone();
                }
            }
        }
        let value = make();
        if let Ok(mut slot) = self.0.try_write() {
            *slot = Some((key, value.clone()));
        }
        value
    }
}

/// How the freshness of a variant is computed, from the cache's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) request_time: Instant,
    pub(crate) response_time: Instant,
    pub(crate) received: SystemTime,
    pub(crate) default_ttl: Option<Duration>,
}

/// Placeholder for headers set on every hit, stored so that setting them
/// replaces a value in place instead of growing the cloned map.
const PLACEHOLDER: HeaderValue = HeaderValue::from_static("0");

impl Timing {
    /// Timing for a response that arrived now, for a request sent at `request_time`.
    pub(crate) fn now(request_time: Instant, default_ttl: Option<Duration>) -> Self {
        Self {
            request_time,
            response_time: Instant::now(),
            received: SystemTime::now(),
            default_ttl,
        }
    }
}

/// A response's freshness facts, computed once when it arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freshness {
    pub(crate) cc: ResponseCc,
    pub(crate) lifetime: Duration,
    /// The corrected initial age (RFC 9111 §4.2.3).
    pub(crate) initial_age: Duration,
    pub(crate) response_time: Instant,
}

impl Freshness {
    pub(crate) fn of(status: StatusCode, headers: &HeaderMap, timing: Timing) -> Self {
        Self::with_cc(ResponseCc::parse(headers), status, headers, timing)
    }

    /// [`of`](Self::of) with the response's `Cache-Control` already parsed.
    pub(crate) fn with_cc(
        cc: ResponseCc,
        status: StatusCode,
        headers: &HeaderMap,
        timing: Timing,
    ) -> Self {
        let lifetime =
            policy::freshness_lifetime(status, headers, &cc, timing.received, timing.default_ttl);
        let delay = timing
            .response_time
            .saturating_duration_since(timing.request_time);
        Self {
            cc,
            lifetime,
            initial_age: policy::initial_age(headers, timing.received, delay),
            response_time: timing.response_time,
        }
    }

    /// What is left of the lifetime on arrival.
    pub(crate) fn fresh_for(&self) -> Duration {
        self.lifetime.saturating_sub(self.initial_age)
    }
}

impl Variant {
    /// A variant of already filtered `headers`, with no body, `Vary` or
    /// tags yet. `Age` and `status_header` (`Cache-Status`) get placeholders.
    pub(crate) fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        fresh: Freshness,
        status_header: Option<&HeaderName>,
    ) -> Self {
        headers.insert(AGE, PLACEHOLDER);
        if let Some(name) = status_header {
            headers.insert(name.clone(), PLACEHOLDER);
        }
        Self {
            status,
            headers,
            body: Collected::default(),
            vary: Box::default(),
            cc: fresh.cc,
            lifetime: fresh.lifetime,
            initial_age: fresh.initial_age,
            response_time: fresh.response_time,
            tags: Box::default(),
            refreshing: AtomicBool::new(false),
            hit_headers: Memo::default(),
        }
    }

    /// The same response with headers updated from a 304 (RFC 9111 §4.3.4).
    pub(crate) fn refreshed(
        &self,
        update: &HeaderMap,
        timing: Timing,
        status_header: Option<&HeaderName>,
    ) -> Self {
        let headers = policy::merge_headers(&self.headers, update);
        let fresh = Freshness::of(self.status, &headers, timing);
        Self {
            body: self.body.clone(),
            vary: self.vary.clone(),
            tags: self.tags.clone(),
            ..Self::new(self.status, headers, fresh, status_header)
        }
    }

    /// The current age (RFC 9111 §4.2.3).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.response_time))
    }

    /// How long past its freshness lifetime the variant is (zero when fresh).
    pub(crate) fn staleness(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.lifetime)
    }

    /// Whether the request's selecting headers match this variant's (RFC 9111 §4.1).
    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| policy::selecting_value(request.get_all(name), name) == *value)
    }

    /// Whether the variant has a validator to revalidate with.
    pub(crate) fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    fn weight(&self) -> usize {
        // Twice: the stored map and the copy hits share (`hit_headers`).
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| 2 * (k.as_str().len() + v.len() + 32))
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, Bytes::len) + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        self.body.data.len() + headers + vary + tags + std::mem::size_of::<Self>()
    }
}

/// All stored variants of one key, newest first.
pub(crate) type Entry = Arc<[Arc<Variant>]>;

/// At most this many variants are kept per key (a bound against `Vary` on
/// a header with unbounded values).
pub(crate) const MAX_VARIANTS: usize = 16;

/// What a purge removes. Data rather than a closure, so that a shared tier
/// can apply it to its own entries and send it to other instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purge {
    /// The entry of one key.
    Key(Key),
    /// Every entry whose key starts with these bytes.
    Prefix(Bytes),
    /// Every entry whose path (after `scheme://authority`) starts with these bytes.
    PathPrefix(Bytes),
    /// Every entry with a variant tagged so.
    Tag(Bytes),
    /// Everything.
    All,
}

impl Purge {
    /// Whether the purge removes the entry of `key`.
    pub(crate) fn matches(&self, key: &Key, entry: &Entry) -> bool {
        match self {
            Self::Key(k) => k == key,
            Self::Prefix(prefix) => key.starts_with(prefix),
            Self::PathPrefix(prefix) => path_of(key.as_bytes()).starts_with(prefix),
            Self::Tag(tag) => entry.iter().any(|v| v.tags.contains(tag)),
            Self::All => true,
        }
    }
}

/// The path (and query) of a default key `scheme://authority/path?query`.
pub(crate) fn path_of(key: &[u8]) -> &[u8] {
    let rest = key
        .windows(3)
        .position(|w| w == b"://")
        .map_or(key, |i| &key[i + 3..]);
    rest.iter()
        .position(|&b| b == b'/')
        .map_or(&[], |i| &rest[i..])
}

/// A second-tier lookup in flight: the entry found, if any.
pub(crate) type Fetch = Pin<Box<dyn Future<Output = Option<Entry>> + Send>>;

/// Where entries live: [`MemoryStore`] in process, or the Redis store, which
/// keeps a `MemoryStore` in front of Redis. Reads of [`get`](Store::get) stay
/// in process; [`fetch`](Store::fetch) asks the second tier after a miss.
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    fn get(&self, key: KeyRef<'_>) -> Option<Entry>;
    fn insert(&self, key: Key, entry: Entry);
    /// Removes the entry of `key`; later reads never see it.
    fn remove(&self, key: &Key) {
        self.purge(Purge::Key(key.clone()));
    }
    /// Removes what `purge` names; later reads never see it.
    fn purge(&self, purge: Purge);
    /// Bytes held in process.
    fn weighted_size(&self) -> u64;
    /// Entries held in process.
    fn entry_count(&self) -> u64;
    /// Looks `key` up in the second tier after an in-process miss; `None`
    /// when there is no second tier to ask (or it is not to be asked now).
    fn fetch(&self, _key: KeyRef<'_>) -> Option<Fetch> {
        None
    }
    /// Completes once writes and purges queued for the second tier were
    /// sent (or failed); at once without one.
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

/// Adds `variant` to the entry of `key`, replacing the variant with the same
/// selecting header values.
pub(crate) fn put_variant(store: &dyn Store, key: Key, variant: Arc<Variant>) {
    // Without `Vary` the response answers every request: it replaces all.
    if variant.vary.is_empty() {
        return store.insert(key, Arc::new([variant]));
    }
    let mut variants = vec![variant.clone()];
    if let Some(entry) = store.get(key.view()) {
        variants.extend(
            entry
                .iter()
                .filter(|old| old.vary != variant.vary)
                .take(MAX_VARIANTS - 1)
                .cloned(),
        );
    }
    store.insert(key, variants.into());
}

/// The in-process store: a sharded S3-FIFO cache (quick_cache) weighed in
/// bytes. Lookups borrow their key and cost one shard read lock; inserts
/// evict on the spot, with no background work or write queue to drain.
pub(crate) struct MemoryStore {
    cache: quick_cache::sync::Cache<Key, Entry, Weigher, BuildHasherDefault<Prehashed>>,
}

/// Every shard holds at least this many bytes: a response stored whole
/// must fit in one shard.
const MIN_SHARD_CAPACITY: u64 = 16 * 1024 * 1024;

/// Weighs an entry in bytes: its key, bodies, headers and bookkeeping.
#[derive(Debug, Clone, Copy)]
struct Weigher;

impl quick_cache::Weighter<Key, Entry> for Weigher {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        (key.len() + entry.iter().map(|v| v.weight()).sum::<usize>()) as u64
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.is(key)
    }
}

impl MemoryStore {
    pub(crate) fn new(max_capacity: u64) -> Self {
        // Shards share the capacity; few enough that each holds at least
        // `MIN_SHARD_CAPACITY` (or all of a smaller cache).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (max_capacity / MIN_SHARD_CAPACITY).clamp(1, 4 * cores as u64);
        let shards = 1 << shards.ilog2();
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .weight_capacity(max_capacity)
            // Sized up front for a quarter of the entries of 4 KiB that fit:
            // fewer rehashes while the cache fills, little memory held ahead.
            .estimated_items_capacity((max_capacity / 16384).clamp(64, 1 << 16) as usize)
            .build()
            .expect("shards and capacity are set");
        let cache = quick_cache::sync::Cache::with_options(
            options,
            Weigher,
            // Keys carry their hash.
            BuildHasherDefault::default(),
            Default::default(),
        );
        Self { cache }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_capacity", &self.cache.capacity())
            .field("shards", &self.cache.num_shards())
            .finish()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: KeyRef<'_>) -> Option<Entry> {
        self.cache.get(&key)
    }

    fn insert(&self, key: Key, entry: Entry) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &Key) {
        self.cache.remove(&key.view());
    }

    fn purge(&self, purge: Purge) {
        match purge {
            Purge::Key(key) => self.remove(&key),
            Purge::All => self.cache.clear(),
            purge => self.cache.retain(|key, entry| !purge.matches(key, entry)),
        }
    }

    fn weighted_size(&self) -> u64 {
        self.cache.weight()
    }

    fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_memo_makes_a_value_once_per_key_in_a_row() {
        let memo = Memo::default();
        let made = std::cell::Cell::new(0);
        let make = |v: &'static str| {
            made.set(made.get() + 1);
            v
        };
        assert_eq!(memo.get(1, || make("a")), "a");
        assert_eq!(memo.get(1, || make("unused")), "a", "same key: shared");
        assert_eq!(made.get(), 1);
        assert_eq!(memo.get(2, || make("b")), "b", "another key: made anew");
        assert_eq!(
            memo.get(1, || make("a2")),
            "a2",
            "only the last key is kept"
        );
        assert_eq!(made.get(), 3);
    }

    fn variant(lang: Option<&str>, body: impl Into<Bytes>) -> Arc<Variant> {
        let timing = Timing::now(Instant::now(), None);
        let headers = HeaderMap::new();
        let fresh = Freshness::of(StatusCode::OK, &headers, timing);
        let mut v = Variant::new(StatusCode::OK, headers, fresh, None);
        v.body = Collected {
            data: body.into(),
            trailers: None,
        };
        if let Some(lang) = lang {
            let name = HeaderName::from_static("accept-language");
            v.vary = vec![(name, Some(Bytes::copy_from_slice(lang.as_bytes())))].into();
        }
        Arc::new(v)
    }

    #[tokio::test]
    async fn variants_replace_their_own_selection_and_stay_bounded() {
        let store = MemoryStore::new(1 << 20);
        let key = Key::from("http://a/x");
        put_variant(&store, key.clone(), variant(Some("fr"), "fr1"));
        put_variant(&store, key.clone(), variant(Some("en"), "en1"));
        put_variant(&store, key.clone(), variant(Some("fr"), "fr2"));
        let entry = store.get(key.view()).unwrap();
        let bodies: Vec<_> = entry.iter().map(|v| v.body.data.clone()).collect();
        assert_eq!(bodies, ["fr2", "en1"], "newest first, one per selection");

        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        assert_eq!(
            entry.iter().find(|v| v.matches(&fr)).unwrap().body.data,
            "fr2"
        );

        for i in 0..100 {
            put_variant(&store, key.clone(), variant(Some(&format!("l{i}")), "x"));
        }
        assert_eq!(store.get(key.view()).unwrap().len(), MAX_VARIANTS);

        // A response without Vary answers every request: it replaces all.
        put_variant(&store, key.clone(), variant(None, "plain"));
        assert_eq!(store.get(key.view()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn borrowed_keys_find_owned_ones_and_the_bound_holds() {
        let store = MemoryStore::new(64 * 1024);
        store.insert(Key::from("http://a/x"), vec![variant(None, "x")].into());
        assert!(store.get(KeyRef::new(b"http://a/x")).is_some());
        assert!(store.get(KeyRef::new(b"http://a/y")).is_none());

        // One response as heavy as most of the cache still fits.
        let big = variant(None, vec![b'b'; 48 * 1024]);
        store.insert(Key::from("http://a/big"), vec![big].into());
        assert!(store.get(KeyRef::new(b"http://a/big")).is_some());

        for i in 0..1000 {
            let key = Key::from(format!("http://a/{i}"));
            store.insert(key, vec![variant(None, vec![b'v'; 1024])].into());
            assert!(store.weighted_size() <= 64 * 1024, "after {i} inserts");
        }
        assert!(store.entry_count() < 1000, "older entries were evicted");
        store.purge(Purge::Prefix("http://a/".into()));
        assert_eq!((store.entry_count(), store.weighted_size()), (0, 0));
    }

    #[tokio::test]
    async fn a_response_heavier_than_a_shard_is_not_stored() {
        // 64 MiB: four shards of 16 MiB. A response a little heavier than
        // one shard fits in none of them.
        let store = MemoryStore::new(64 << 20);
        let shards = store.cache.num_shards() as u64;
        assert!(shards > 1 && (64 << 20) / shards >= MIN_SHARD_CAPACITY);
        let per_shard = ((64 << 20) / shards) as usize;
        let too_big = variant(None, vec![b'b'; per_shard + 1024]);
        store.insert(Key::from("http://a/too-big"), vec![too_big].into());
        assert!(store.get(KeyRef::new(b"http://a/too-big")).is_none());
        assert_eq!(store.weighted_size(), 0, "nothing else was evicted for it");

        let fits = variant(None, vec![b'f'; 1 << 20]);
        store.insert(Key::from("http://a/fits"), vec![fits].into());
        assert!(store.get(KeyRef::new(b"http://a/fits")).is_some());
    }

    #[test]
    fn path_of_keys() {
        assert_eq!(path_of(b"http://a.com/x/y?z"), b"/x/y?z");
        assert_eq!(path_of(b"https://a.com"), b"");
        assert_eq!(path_of(b"/x"), b"/x");
    }

    #[tokio::test]
    async fn weight_counts_body_and_headers() {
        let small = variant(None, "x");
        let big = variant(None, "y".repeat(10_000));
        assert!(big.weight() >= 10_000);
        assert!(big.weight() - small.weight() == 9_999);
    }
}
