//! The cache for declared gRPC reads (see [`crate::grpc`]): a wrapper
//! around [`CacheService`] that keys unary reads by their message and sends
//! everything else through the HTTP cache unchanged.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{AUTHORIZATION, SET_COOKIE},
    Request, Response, StatusCode,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::{CacheBody, Inserter},
    future::{is_collapsed, tags, Forward, ResponseFuture},
    policy::{self, ResponseCc},
    service::{serve, Fwd, Status},
    store::{Freshness, Variant},
    CacheHandle, CacheLayer, CacheService,
};
use crate::{
    body::Tee,
    grpc::{failed_early, GrpcBody, GrpcReads},
    key::RequestHead,
};

impl CacheLayer {
    /// Also caches the unary gRPC reads `reads` declares, keyed by their
    /// request message; see [`crate::grpc`]. Call it last: the returned
    /// layer hands its inner service a [`GrpcBody`].
    pub fn grpc_reads(self, reads: GrpcReads) -> GrpcCacheLayer {
        GrpcCacheLayer { http: self, reads }
    }
}

/// A [`CacheLayer`] that also caches declared gRPC reads; made by
/// [`CacheLayer::grpc_reads`]. Its services pass [`GrpcBody`] inward.
#[derive(Clone)]
pub struct GrpcCacheLayer {
    http: CacheLayer,
    reads: GrpcReads,
}

impl GrpcCacheLayer {
    /// A handle on this layer's store, to purge and inspect it.
    pub fn handle(&self) -> CacheHandle {
        self.http.handle()
    }
}

impl fmt::Debug for GrpcCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCacheLayer")
            .field("http", &self.http)
            .field("reads", &self.reads)
            .finish()
    }
}

impl<S> Layer<S> for GrpcCacheLayer {
    type Service = GrpcCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCache {
            http: self.http.layer(inner),
            reads: self.reads.clone(),
        }
    }
}

/// [`CacheService`] that also answers declared gRPC reads from the cache;
/// made by [`GrpcCacheLayer`]. See [`crate::grpc`].
#[derive(Clone)]
pub struct GrpcCache<S> {
    http: CacheService<S>,
    reads: GrpcReads,
}

impl<S> GrpcCache<S> {
    /// Gets a reference to the underlying service.
    pub fn get_ref(&self) -> &S {
        self.http.get_ref()
    }

    /// Gets a mutable reference to the underlying service.
    pub fn get_mut(&mut self) -> &mut S {
        self.http.get_mut()
    }

    /// Consumes `self`, returning the underlying service.
    pub fn into_inner(self) -> S {
        self.http.into_inner()
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCache")
            .field("http", &self.http)
            .field("reads", &self.reads)
            .finish()
    }
}

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`GrpcCache`].
    pub struct GrpcResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Everything but declared reads: the HTTP cache's own future.
        Http { #[pin] fut: ResponseFuture<F, B> },
        // A declared read: its body is read first (boxed: gRPC reads only).
        Read { fut: Boxed<B, E> },
    }
}

impl<F, B, E> Future for GrpcResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Http { fut } => fut.poll(cx),
            KindProj::Read { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for GrpcResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Http { fut } => return fmt::Debug::fmt(fut, f),
            Kind::Read { .. } => "Read",
        };
        f.debug_tuple("GrpcResponseFuture").field(&kind).finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcCache<S>
where
    S: Service<Request<GrpcBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(path) = self.reads.declared(&req) else {
            let fut = self.http.call(req.map(GrpcBody::new));
            return GrpcResponseFuture {
                kind: Kind::Http { fut },
            };
        };
        let ttl = self
            .reads
            .ttl_for(path)
            .or(self.http.shared().settings.default_ttl);
        // The body is read before the call: the ready service goes with
        // the request, a clone stays (polled ready before its own call).
        let clone = self.http.clone();
        let svc = std::mem::replace(&mut self.http, clone);
        let fut = read(svc, self.reads.clone(), ttl, req);
        GrpcResponseFuture {
            kind: Kind::Read { fut: Box::pin(fut) },
        }
    }
}

/// A declared read: answered from the cache, or sent upstream and stored
/// when it succeeds.
async fn read<S, ReqBody, ResBody>(
    mut svc: CacheService<S>,
    reads: GrpcReads,
    ttl: Option<Duration>,
    req: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<GrpcBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    let shared = svc.shared().clone();
    let now = Instant::now();
    let (parts, body) = req.into_parts();
    let (message, body) = reads.read(body).await;
    let req = Request::from_parts(parts, body);
    let options = &shared.settings.key_options;
    // A caller's credentials: its answer is its own unless they are keyed.
    let personal =
        req.headers().contains_key(AUTHORIZATION) && !options.headers().contains(&AUTHORIZATION);
    let key = message
        .filter(|_| !personal)
        .and_then(|message| options.grpc_key(&RequestHead::from_request(&req), &message));
    let Some(key) = key else {
        // Over the cap, not one message, credentials, or declined by the
        // key function.
        let forward = Forward::pass(&shared, now, Fwd::Bypass, None);
        return ResponseFuture::upstream(svc.get_mut().call(req), forward).await;
    };
    let entry = match shared.store.get(key.view()) {
        Some(entry) => Some(entry),
        None => match shared.store.fetch(key.view()) {
            Some(fetch) => fetch.await,
            None => None,
        },
    };
    let now = Instant::now();
    let mut fwd = Fwd::UriMiss;
    if let Some(variant) = entry.as_ref().and_then(|e| e.first()) {
        if variant.age(now) < variant.lifetime {
            let hit = Status {
                hit: true,
                ..Status::default()
            };
            return Ok(serve(&shared, variant, now, false, req.headers(), hit));
        }
        fwd = Fwd::Stale;
    }
    let res = svc.get_mut().call(req).await?;
    let (mut parts, body) = res.into_parts();
    let mut status = Status {
        fwd: Some(fwd),
        fwd_status: Some(parts.status),
        collapsed: is_collapsed(&parts.extensions),
        ..Status::default()
    };
    let settings = &shared.settings;
    let cap = settings.max_body_size;
    let storable = parts.status == StatusCode::OK
        && !failed_early(&parts.headers)
        && (settings.store_set_cookie || !parts.headers.contains_key(SET_COOKIE))
        && body.size_hint().lower() <= cap as u64;
    let cc = ResponseCc::parse(&parts.headers);
    let body = match ttl.filter(|ttl| storable && !cc.no_store && !cc.private && !ttl.is_zero()) {
        Some(ttl) => {
            status.stored = true;
            let fresh = Freshness {
                cc,
                lifetime: ttl,
                initial_age: Duration::ZERO,
                response_time: now,
            };
            let tag_header = settings.tag_header.as_ref();
            let mut variant = Variant::new(
                parts.status,
                policy::headers_to_store(&parts.headers, tag_header),
                fresh,
                settings.status_header.as_ref(),
            );
            if let Some(tag_header) = tag_header {
                variant.tags = tags(&parts.headers, tag_header);
            }
            let inserter = Inserter {
                shared: shared.clone(),
                key,
                variant: Arc::new(variant),
                grpc: true,
            };
            Tee::new(body, cap, inserter)
        }
        None => Tee::passthrough(body),
    };
    if let Some(tag_header) = &settings.tag_header {
        parts.headers.remove(tag_header);
    }
    status.apply(&shared, &mut parts.headers);
    Ok(Response::from_parts(parts, CacheBody::upstream(body)))
}
