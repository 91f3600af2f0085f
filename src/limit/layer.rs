use std::{sync::Arc, time::Duration};

use http::HeaderName;
use tower_layer::Layer;

use super::{
    controller::{Config, Shared},
    partition::PartitionBy,
    AdaptiveLimit, Algorithm, Classify, DefaultAlgorithm, DefaultClassifier, LimitHandle, Queue,
    Window,
};
use crate::{key::RequestHead, reject};

/// Applies an adaptive concurrency limit to requests; see the
/// [module docs](super) for the behaviour, defaults and examples.
///
/// Build it once: its constructor creates the controller that every service
/// it makes (every route, connection and clone) shares. Each builder method
/// returns a layer with a fresh controller, so configure first, then call
/// [`handle`](Self::handle) and add the layer.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<A = DefaultAlgorithm, C = DefaultClassifier> {
    pub(crate) shared: Arc<Shared<A>>,
    pub(crate) classifier: C,
}

impl AdaptiveLimitLayer {
    /// A limiter with the default algorithm ([`DefaultAlgorithm`]) and
    /// defaults throughout.
    pub fn new() -> Self {
        Self::with_algorithm(DefaultAlgorithm::default())
    }
}

impl Default for AdaptiveLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Algorithm> AdaptiveLimitLayer<A> {
    /// A limiter driven by `algorithm`.
    pub fn with_algorithm(algorithm: A) -> Self {
        Self {
            shared: Arc::new(Shared::new(Config {
                algorithm,
                initial: 20,
                min: 1,
                max: 1000,
                window: Window::default(),
                queue: None,
                partitions: Default::default(),
                retry_after: reject::retry_after(Duration::from_secs(1)),
            })),
            classifier: DefaultClassifier,
        }
    }
}

impl<A: Algorithm, C> AdaptiveLimitLayer<A, C> {
    fn configure(mut self, f: impl FnOnce(&mut Config<A>)) -> Self {
        let mut config = self.shared.config.clone();
        f(&mut config);
        self.shared = Arc::new(Shared::new(config));
        self
    }

    /// The limit before the first window closes (default 20), clamped to
    /// `[min_limit, max_limit]`.
    pub fn initial_limit(self, limit: usize) -> Self {
        self.configure(|c| c.initial = limit)
    }

    /// The limit never goes below this (default 1; at least 1).
    pub fn min_limit(self, limit: usize) -> Self {
        self.configure(|c| c.min = limit)
    }

    /// The limit never goes above this (default 1000).
    pub fn max_limit(self, limit: usize) -> Self {
        self.configure(|c| c.max = limit)
    }

    /// How samples are grouped into windows (default [`Window::default`]).
    pub fn window(self, window: Window) -> Self {
        self.configure(|c| c.window = window)
    }

    /// Lets requests over the limit wait for a slot (off by default).
    pub fn queue(self, queue: Queue) -> Self {
        self.configure(|c| c.queue = Some(queue))
    }

    /// The `Retry-After` of the 503 response, rounded up to whole seconds
    /// (default 1 s).
    pub fn retry_after(self, after: Duration) -> Self {
        self.configure(|c| c.retry_after = reject::retry_after(after))
    }

    /// Adds a partition named `name` with a guaranteed `share` of the limit
    /// (in `[0, 1]`). Requests whose partition is under `ceil(share × limit)`
    /// in flight are admitted even when the limiter is full; the others
    /// share what is free. Requests in no partition use only what is free.
    pub fn partition(self, name: &str, share: f64) -> Self {
        self.configure(|c| c.partitions.add(name, share))
    }

    /// Names a request's partition by the value of this header.
    pub fn partition_by_header(self, header: HeaderName) -> Self {
        self.configure(|c| c.partitions.set_by(PartitionBy::Header(header)))
    }

    /// Names a request's partition by its route: axum's `MatchedPath` (with
    /// the `axum` feature, inside a `Router`), else the gRPC method
    /// (`/pkg.Service/Method`), else the path.
    pub fn partition_by_route(self) -> Self {
        self.configure(|c| c.partitions.set_by(PartitionBy::Route))
    }

    /// Names a request's partition with a function of its head.
    pub fn partition_by<F>(self, f: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<&'static str> + Send + Sync + 'static,
    {
        self.configure(|c| c.partitions.set_by(PartitionBy::Fn(Arc::new(f))))
    }

    /// Replaces the outcome classifier (default [`DefaultClassifier`]).
    pub fn classifier<C2: Classify>(self, classifier: C2) -> AdaptiveLimitLayer<A, C2> {
        AdaptiveLimitLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// A handle on this layer's controller: current limit, in-flight count,
    /// counters.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle {
            stats: self.shared.stats.clone(),
        }
    }
}

impl<S, A, C: Clone> Layer<S> for AdaptiveLimitLayer<A, C> {
    type Service = AdaptiveLimit<S, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
