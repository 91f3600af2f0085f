use std::{
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    controller::{Admit, Shared},
    future::ResponseFuture,
    AdaptiveLimitLayer, Algorithm, Classify, DefaultAlgorithm, DefaultClassifier, ResponseBody,
};
use crate::reject;

/// The `grpc-message` / body of the overload response.
const MESSAGE: &str = "concurrency limit reached, retry later";

/// Middleware that applies an adaptive concurrency limit; see the
/// [module docs](super).
///
/// Built by [`AdaptiveLimitLayer`]; every clone shares the layer's controller.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit<S, A = DefaultAlgorithm, C = DefaultClassifier> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<A>>,
    pub(crate) classifier: C,
}

impl<S> AdaptiveLimit<S> {
    /// Wraps `inner` in a limiter with its own controller and the defaults.
    pub fn new(inner: S) -> Self {
        use tower_layer::Layer as _;
        AdaptiveLimitLayer::new().layer(inner)
    }

    /// A layer with the defaults: [`AdaptiveLimitLayer::new`].
    pub fn layer() -> AdaptiveLimitLayer {
        AdaptiveLimitLayer::new()
    }
}

impl<S, A, C> AdaptiveLimit<S, A, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, A, C, ReqBody, ResBody> Service<Request<ReqBody>> for AdaptiveLimit<S, A, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    A: Algorithm,
    C: Classify,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody, A, C>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, A, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let partition = self.shared.config.partitions.classify(&req);
        match self.shared.admit(partition) {
            Admit::Now(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Admit::Queued(ticket) => {
                // The ready service waits with the request; a fresh clone
                // stays here for the next poll_ready.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                let timeout = self
                    .shared
                    .config
                    .queue
                    .map(|q| q.timeout)
                    .unwrap_or_default();
                ResponseFuture::waiting(ticket, timeout, inner, req, self.classifier.clone())
            }
            Admit::Rejected => ResponseFuture::rejected(overloaded(&self.shared, &req)),
        }
    }
}

/// The overload response: for a request over the limit, or one that waited
/// in the queue past its timeout.
pub(crate) fn overloaded<A: Algorithm, B>(
    shared: &Shared<A>,
    req: &Request<B>,
) -> Response<http_body_util::Full<Bytes>> {
    reject::overloaded(req, &shared.config.retry_after, MESSAGE)
}
