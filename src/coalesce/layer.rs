use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{flight::Shared, Coalesce, PanicOutcome};
use crate::key::KeyOptions;

/// Applies [`Coalesce`] to a service: identical in-flight `GET`/`HEAD`
/// requests share one call of the inner service.
///
/// Build it once and reuse it: every service it makes shares one map of
/// in-flight keys. See the [module docs](crate::coalesce) for the semantics.
#[derive(Clone)]
pub struct CoalesceLayer {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) key: KeyOptions,
    pub(crate) bypass_credentials: bool,
    pub(crate) max_body_size: usize,
    pub(crate) hit_for_miss: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) max_leader_age: Duration,
    pub(crate) on_panic: PanicOutcome,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key: KeyOptions::new(),
            bypass_credentials: true,
            max_body_size: 1024 * 1024,
            hit_for_miss: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
            max_leader_age: Duration::from_secs(5),
            on_panic: PanicOutcome::InternalServerError,
        }
    }
}

impl CoalesceLayer {
    /// A layer with the defaults: keys from scheme, authority, path and query;
    /// requests with `Authorization` or `Cookie` bypassed; responses up to
    /// 1 MiB shared; 5 s hit-for-miss, wait timeout and leader age; a panic
    /// answered with `500 Internal Server Error`.
    pub fn new() -> Self {
        Self::from_config(Config::default())
    }

    fn from_config(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared::new(config)),
        }
    }

    // Builders start a fresh shared state: they are meant for construction,
    // before the layer is cloned or applied.
    fn with(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config.clone();
        f(&mut config);
        Self::from_config(config)
    }

    /// How requests become keys (query normalisation, request headers that
    /// make responses differ, a custom key function). The method is always
    /// part of the key, so `GET` and `HEAD` never share a flight.
    pub fn key_options(self, key: KeyOptions) -> Self {
        self.with(|c| c.key = key)
    }

    /// Whether requests carrying `Authorization` or `Cookie` go straight to
    /// the inner service (default `true`: their responses are usually
    /// personal). Turn it off only when the key separates users, e.g.
    /// `KeyOptions::header(AUTHORIZATION)`.
    pub fn bypass_credentials(self, bypass: bool) -> Self {
        self.with(|c| c.bypass_credentials = bypass)
    }

    /// The largest response body shared with followers (default 1 MiB).
    /// A larger response goes to its own caller as it streams, and the other
    /// waiters are released to call upstream.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.with(|c| c.max_body_size = bytes)
    }

    /// How long a key whose response could not be shared (too large,
    /// streaming, personalised) sends its requests straight upstream instead
    /// of queueing them behind a leader (default 5 s; Varnish's hit-for-miss).
    pub fn hit_for_miss(self, duration: Duration) -> Self {
        self.with(|c| c.hit_for_miss = duration)
    }

    /// How long a follower waits for its leader before it calls the inner
    /// service itself (default 5 s, like nginx's `proxy_cache_lock_timeout`).
    pub fn wait_timeout(self, duration: Duration) -> Self {
        self.with(|c| c.wait_timeout = duration)
    }

    /// How long a leader accepts followers (default 5 s, like nginx's
    /// `proxy_cache_lock_age`). A request for a key whose leader is older
    /// becomes a new leader, so one stuck call does not capture a key. The
    /// age counts from the call's first `Pending` (or its first follower).
    pub fn max_leader_age(self, duration: Duration) -> Self {
        self.with(|c| c.max_leader_age = duration)
    }

    /// What the waiters of a call whose inner service panicked receive
    /// (default [`PanicOutcome::InternalServerError`]).
    pub fn on_panic(self, outcome: PanicOutcome) -> Self {
        self.with(|c| c.on_panic = outcome)
    }
}

impl Default for CoalesceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CoalesceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            shared: self.shared.clone(),
        }
    }
}
