//! What the cache stores and where: a stored response (`Variant`), the
//! variants of one key (`Entry`), and the store behind a small trait so a
//! shared second tier can sit next to the in-process moka cache later.

use std::{
    fmt,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header::AGE, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::policy::{self, ResponseCc};
use crate::{body::Collected, key::Key};

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
        let cc = ResponseCc::parse(headers);
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
            .all(|(name, value)| policy::selecting_value(request, name) == *value)
    }

    /// Whether the variant has a validator to revalidate with.
    pub(crate) fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
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
const MAX_VARIANTS: usize = 16;

/// A predicate over stored entries, for purges.
pub(crate) type Predicate = Box<dyn Fn(&Key, &Entry) -> bool + Send + Sync>;

/// Where entries live. The in-process tier is [`MokaStore`]; a shared tier
/// (Redis) implements the same operations.
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    fn get(&self, key: &Key) -> Option<Entry>;
    fn insert(&self, key: Key, entry: Entry);
    fn remove(&self, key: &Key);
    /// Removes every entry for which `predicate` holds; later reads never see them.
    fn remove_if(&self, predicate: Predicate);
    fn clear(&self);
    /// Bytes held, after pending evictions ran.
    fn weighted_size(&self) -> u64;
    /// Entries held, after pending evictions ran.
    fn entry_count(&self) -> u64;
}

/// Adds `variant` to the entry of `key`, replacing the variant with the same
/// selecting header values.
pub(crate) fn put_variant(store: &dyn Store, key: Key, variant: Arc<Variant>) {
    let mut variants = vec![variant.clone()];
    // Without `Vary` the response answers every request: it replaces all.
    if variant.vary.is_empty() {
        return store.insert(key, variants.into());
    }
    if let Some(entry) = store.get(&key) {
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

/// The in-process store: a moka cache weighed in bytes.
pub(crate) struct MokaStore {
    cache: moka::sync::Cache<Key, Entry>,
}

impl MokaStore {
    pub(crate) fn new(max_capacity: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_capacity)
            .weigher(|key: &Key, entry: &Entry| {
                let bytes = key.len() + entry.iter().map(|v| v.weight()).sum::<usize>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build();
        Self { cache }
    }
}

impl fmt::Debug for MokaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaStore")
            .field("max_capacity", &self.cache.policy().max_capacity())
            .finish()
    }
}

impl Store for MokaStore {
    fn get(&self, key: &Key) -> Option<Entry> {
        self.cache.get(key)
    }

    fn insert(&self, key: Key, entry: Entry) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    fn remove_if(&self, predicate: Predicate) {
        // Only fails when closures were not enabled at build time; they are.
        if self.cache.invalidate_entries_if(predicate).is_err() {
            self.cache.invalidate_all();
        }
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
