use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tower_layer::Layer;

use super::{
    service::{CacheService, StatusValues},
    store::{MemoryStore, Purge, Store},
};
use crate::key::{Key, KeyOptions};

/// Default bound on the bytes held by the cache: 64 MiB.
const DEFAULT_MAX_CAPACITY: u64 = 64 * 1024 * 1024;
/// Default bound on one stored body: 1 MiB.
const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;
/// Default bound on `stale-while-revalidate` and `stale-if-error`: a day.
const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 60 * 60);

/// The layer's settings, shared by every service it makes.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_body_size: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) key_options: KeyOptions,
    pub(crate) store_set_cookie: bool,
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) status_name: Box<str>,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) max_stale_while_revalidate: Duration,
    pub(crate) max_stale_if_error: Duration,
}

/// Settings and store, created once per layer and shared through an `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    /// `Cache-Status` values of forwarded responses, one per `fwd` reason.
    pub(crate) forwarded: StatusValues,
    max_capacity: u64,
    #[cfg(feature = "redis")]
    redis: Option<super::RedisTier>,
}

/// A [`Layer`] that adds an RFC 9111 shared response cache.
///
/// See the [module docs](crate::cache) for what is stored and served.
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("max_capacity", &self.shared.max_capacity)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheLayer {
    /// A cache of 64 MiB, storing bodies up to 1 MiB, keyed by scheme,
    /// authority, path and query, with no default TTL.
    pub fn new() -> Self {
        let settings = Settings {
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            default_ttl: None,
            key_options: KeyOptions::new(),
            store_set_cookie: false,
            status_header: Some(HeaderName::from_static("cache-status")),
            status_name: "tower-perf".into(),
            tag_header: Some(HeaderName::from_static("surrogate-key")),
            max_stale_while_revalidate: DEFAULT_MAX_STALE,
            max_stale_if_error: DEFAULT_MAX_STALE,
        };
        Self {
            shared: Arc::new(Shared {
                settings,
                store: Arc::new(MemoryStore::new(DEFAULT_MAX_CAPACITY)),
                forwarded: StatusValues::default(),
                max_capacity: DEFAULT_MAX_CAPACITY,
                #[cfg(feature = "redis")]
                redis: None,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        f(&mut settings);
        Self {
            shared: Arc::new(Shared {
                settings,
                store: self.shared.store.clone(),
                forwarded: StatusValues::default(),
                max_capacity: self.shared.max_capacity,
                #[cfg(feature = "redis")]
                redis: self.shared.redis.clone(),
            }),
        }
    }

    /// Bounds the bytes held (bodies, headers and bookkeeping; default 64 MiB).
    ///
    /// The store is split in shards of at least 16 MiB each (or one shard
    /// for a smaller cache), evicted on their own with S3-FIFO: a response
    /// heavier than one shard is not stored. With the default
    /// [`max_body_size`](Self::max_body_size) of 1 MiB that never happens.
    ///
    /// This starts a new, empty store: take [`handle`](Self::handle) after it.
    pub fn max_capacity(self, bytes: u64) -> Self {
        let l1 = MemoryStore::new(bytes);
        #[cfg(feature = "redis")]
        let store = match &self.shared.redis {
            Some(tier) => tier.store(l1),
            None => Arc::new(l1),
        };
        #[cfg(not(feature = "redis"))]
        let store = Arc::new(l1);
        Self {
            shared: Arc::new(Shared {
                settings: self.shared.settings.clone(),
                store,
                forwarded: StatusValues::default(),
                max_capacity: bytes,
                #[cfg(feature = "redis")]
                redis: self.shared.redis.clone(),
            }),
        }
    }

    /// Adds a shared second tier on Redis behind the in-process one: see
    /// [the module docs](crate::cache#shared-tier-on-redis).
    ///
    /// This starts a new, empty in-process store: take
    /// [`handle`](Self::handle) after it.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(self, tier: super::RedisTier) -> Self {
        let capacity = self.shared.max_capacity;
        Self {
            shared: Arc::new(Shared {
                settings: self.shared.settings.clone(),
                store: Arc::new(MemoryStore::new(0)),
                forwarded: StatusValues::default(),
                max_capacity: capacity,
                redis: Some(tier),
            }),
        }
        .max_capacity(capacity)
    }

    /// The largest body stored (default 1 MiB). Larger responses stream
    /// through untouched; a `Content-Length` over it skips collection at once.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.with(|s| s.max_body_size = bytes)
    }

    /// Freshness for storable responses that carry none (no `max-age`,
    /// `s-maxage` or `Expires`), instead of the `Last-Modified` heuristic.
    /// Off by default: only the origin says how long a response is fresh.
    pub fn default_ttl(self, ttl: Duration) -> Self {
        self.with(|s| s.default_ttl = Some(ttl))
    }

    /// How requests become keys (query normalisation, key headers, a custom
    /// key function). The method is never part of the key: HEAD is answered
    /// from GET's entry.
    pub fn key_options(self, options: KeyOptions) -> Self {
        self.with(|s| s.key_options = options)
    }

    /// Stores responses that carry `Set-Cookie` (with the header) when
    /// `true`. Off by default: one user's cookie must not reach another.
    pub fn store_set_cookie(self, store: bool) -> Self {
        self.with(|s| s.store_set_cookie = store)
    }

    /// The cache's name in the `Cache-Status` header (default `tower-perf`).
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header value.
    pub fn cache_status_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            HeaderValue::from_str(&name).is_ok(),
            "cache name must be a valid header value"
        );
        self.with(|s| s.status_name = name.into())
    }

    /// The RFC 9211 status header's name (default `cache-status`), or
    /// `None` to send none.
    pub fn cache_status_header(self, name: Option<HeaderName>) -> Self {
        self.with(|s| s.status_header = name)
    }

    /// The response header that tags entries for [`CacheHandle::purge_tag`]
    /// (default `surrogate-key`; tags separated by spaces or commas). It is
    /// removed before the response leaves. `None` turns tagging off.
    pub fn tag_header(self, name: Option<HeaderName>) -> Self {
        self.with(|s| s.tag_header = name)
    }

    /// Caps the `stale-while-revalidate` window honoured (default a day).
    pub fn max_stale_while_revalidate(self, limit: Duration) -> Self {
        self.with(|s| s.max_stale_while_revalidate = limit)
    }

    /// Caps the `stale-if-error` window honoured (default a day).
    pub fn max_stale_if_error(self, limit: Duration) -> Self {
        self.with(|s| s.max_stale_if_error = limit)
    }

    /// A handle on this layer's store, to purge and inspect it.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::from_shared(inner, self.shared.clone())
    }
}

/// Purges and inspects a cache's store; cheap to clone.
///
/// Purges take effect at once: later requests never see a purged entry.
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("store", &self.shared.store)
            .finish()
    }
}

impl CacheHandle {
    /// Removes the entry (every variant) of `key`, e.g. `http://example.com/a?b=1`
    /// with the default key options.
    pub fn purge_key(&self, key: impl Into<Key>) {
        self.shared.store.remove(&key.into());
    }

    /// Removes every entry whose path starts with `prefix` (e.g. `/users/`),
    /// whatever its scheme and authority.
    pub fn purge_path_prefix(&self, prefix: impl Into<String>) {
        let prefix = Bytes::from(prefix.into());
        self.shared.store.purge(Purge::PathPrefix(prefix));
    }

    /// Removes every entry whose key starts with `prefix`
    /// (e.g. `https://example.com/users/`).
    pub fn purge_prefix(&self, prefix: impl Into<Key>) {
        let prefix = Bytes::copy_from_slice(prefix.into().as_bytes());
        self.shared.store.purge(Purge::Prefix(prefix));
    }

    /// Removes every entry tagged `tag` by the tag header.
    pub fn purge_tag(&self, tag: impl Into<String>) {
        let tag = Bytes::from(tag.into());
        self.shared.store.purge(Purge::Tag(tag));
    }

    /// Removes everything.
    pub fn purge_all(&self) {
        self.shared.store.purge(Purge::All);
    }

    /// Waits until the writes and purges queued for the shared tier were
    /// sent to it (or failed), and its invalidation subscription listens
    /// (or a second passed). Returns at once without a shared tier. Useful
    /// before shutting down, and in tests.
    pub async fn flush(&self) {
        self.shared.store.flush().await;
    }

    /// The bytes held in process now.
    pub fn weighted_size(&self) -> u64 {
        self.shared.store.weighted_size()
    }

    /// The number of keys held in process now.
    pub fn entry_count(&self) -> u64 {
        self.shared.store.entry_count()
    }
}
