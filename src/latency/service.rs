use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use tower_service::Service;

use super::{
    labels::method_index,
    state::{Recording, Registry, RouteRef},
    LatencyBody, LatencyLayer, ResponseFuture,
};
use crate::route::{grpc_method, is_grpc, matched_path, NoRoute, RouteFn};

/// Middleware that records per-route request latency.
///
/// Made by [`LatencyLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Latency<S, R = NoRoute> {
    pub(crate) inner: S,
    pub(crate) registry: Arc<Registry>,
    pub(crate) route_fn: R,
}

impl<S> Latency<S> {
    /// Wraps `inner` with a default [`LatencyLayer`].
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&LatencyLayer::new(), inner)
    }

    /// A default [`LatencyLayer`].
    pub fn layer() -> LatencyLayer {
        LatencyLayer::new()
    }
}

impl<S, R> Latency<S, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, R> fmt::Debug for Latency<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latency")
            .field("inner", &self.inner)
            .field("config", &self.registry.config)
            .finish()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Latency<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: 'static,
    R: RouteFn<ReqBody>,
    ResBody: http_body::Body<Data = Bytes>,
{
    type Response = Response<LatencyBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let start = self.registry.config.clock.now();
        // gRPC runs over HTTP/2 only: HTTP/1 requests skip the header lookup.
        let grpc = req.version() == Version::HTTP_2 && is_grpc(&req);
        let grpc_route = if grpc { grpc_method(&req) } else { None };
        let route = match grpc_route.or_else(|| matched_path(&req)) {
            Some(route) => self.registry.lookup(route),
            None => match self.route_fn.route(&req) {
                Some(route) => self.registry.lookup(route.as_ref()),
                None => RouteRef::Unmatched,
            },
        };
        let recording = Recording::start(
            self.registry.clone(),
            route,
            method_index(req.method()),
            grpc,
            req.method() == Method::HEAD,
            start,
        );
        ResponseFuture {
            inner: self.inner.call(req),
            recording: Some(recording),
        }
    }
}
