//! Coalescing of declared gRPC reads (see [`crate::grpc`]): a wrapper around
//! [`Coalesce`] that keys unary reads by their message and sends everything
//! else through the HTTP coalescer unchanged.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, response::Parts, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::CoalesceBody,
    flight::Join,
    future::{shareable, Leader, Policy, ResponseFuture, Verdict},
    Coalesce, CoalesceLayer,
};
use crate::{
    body::Collected,
    grpc::{failed_early, succeeded, GrpcBody, GrpcReads},
    key::RequestHead,
};

impl CoalesceLayer {
    /// Also coalesces the unary gRPC reads `reads` declares, keyed by their
    /// request message; see [`crate::grpc`]. Call it last: the returned
    /// layer hands its inner service a [`GrpcBody`].
    pub fn grpc_reads(self, reads: GrpcReads) -> GrpcCoalesceLayer {
        GrpcCoalesceLayer { http: self, reads }
    }
}

/// A [`CoalesceLayer`] that also coalesces declared gRPC reads; made by
/// [`CoalesceLayer::grpc_reads`]. Its services pass [`GrpcBody`] inward.
#[derive(Clone)]
pub struct GrpcCoalesceLayer {
    http: CoalesceLayer,
    reads: GrpcReads,
}

impl fmt::Debug for GrpcCoalesceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCoalesceLayer")
            .field("http", &self.http)
            .field("reads", &self.reads)
            .finish()
    }
}

impl<S> Layer<S> for GrpcCoalesceLayer {
    type Service = GrpcCoalesce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCoalesce {
            http: self.http.layer(inner),
            reads: self.reads.clone(),
        }
    }
}

/// [`Coalesce`] that also coalesces declared gRPC reads; made by
/// [`GrpcCoalesceLayer`]. See [`crate::grpc`].
#[derive(Clone)]
pub struct GrpcCoalesce<S> {
    http: Coalesce<S>,
    reads: GrpcReads,
}

impl<S> GrpcCoalesce<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.http.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.http.get_mut()
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.http.into_inner()
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcCoalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCoalesce")
            .field("http", &self.http)
            .field("reads", &self.reads)
            .finish()
    }
}

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<CoalesceBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`GrpcCoalesce`].
    pub struct GrpcResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<GrpcBody<ReqBody>>>,
        ReqBody: Body,
        ResBody: Body,
    {
        #[pin]
        kind: Kind<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody, ResBody>
    where
        S: Service<Request<GrpcBody<ReqBody>>>,
        ReqBody: Body,
        ResBody: Body,
    {
        // Everything but declared reads: the HTTP coalescer's own future.
        Http { #[pin] fut: ResponseFuture<S, GrpcBody<ReqBody>, ResBody> },
        // A declared read: its body is read first (boxed: gRPC reads only).
        Read { fut: Boxed<ResBody, S::Error> },
    }
}

impl<S, ReqBody, ResBody> Future for GrpcResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<GrpcBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Output = Result<Response<CoalesceBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Http { fut } => fut.poll(cx),
            KindProj::Read { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for GrpcResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<GrpcBody<ReqBody>>>,
    ReqBody: Body,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Http { fut } => fmt::Debug::fmt(fut, f),
            Kind::Read { .. } => f.write_str("GrpcResponseFuture(Read)"),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcCoalesce<S>
where
    S: Service<Request<GrpcBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<CoalesceBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if self.reads.declared(&req).is_none() {
            let fut = self.http.call(req.map(GrpcBody::new));
            return GrpcResponseFuture {
                kind: Kind::Http { fut },
            };
        }
        // The body is read before the call: the ready service goes with
        // the request, a clone stays (polled ready before its own call).
        let clone = self.http.clone();
        let svc = std::mem::replace(&mut self.http, clone);
        GrpcResponseFuture {
            kind: Kind::Read {
                fut: Box::pin(read(svc, self.reads.clone(), req)),
            },
        }
    }
}

/// A declared read: joins the flight of its key (its message), or goes
/// upstream alone when it has none.
async fn read<S, ReqBody, ResBody>(
    svc: Coalesce<S>,
    reads: GrpcReads,
    req: Request<ReqBody>,
) -> Result<Response<CoalesceBody<ResBody>>, S::Error>
where
    S: Service<Request<GrpcBody<ReqBody>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    let Coalesce { mut inner, shared } = svc;
    let (parts, body) = req.into_parts();
    let (message, body) = reads.read(body).await;
    let req = Request::from_parts(parts, body);
    let config = &shared.config;
    let credentials = config.bypass_credentials
        && (req.headers().contains_key(header::AUTHORIZATION)
            || req.headers().contains_key(header::COOKIE));
    let key = message.filter(|_| !credentials).and_then(|message| {
        config
            .key
            .grpc_key(&RequestHead::from_request(&req), &message)
    });
    let join = match key {
        Some(key) => shared.join(key.as_bytes()),
        // Over the cap, not one message, credentials, or declined by the key function.
        None => Join::Bypass,
    };
    match join {
        Join::Bypass => {
            shared.counters.bypass.increment(1);
            let res = inner.call(req).await?;
            Ok(res.map(CoalesceBody::inner))
        }
        Join::Lead(publisher) => {
            shared.counters.leader.increment(1);
            let mut leader = Leader::<_, _, Grpc>::new(inner.call(req), publisher);
            std::future::poll_fn(|cx| leader.poll(cx)).await
        }
        Join::Follow(waiter, rx) => {
            shared.counters.follower.increment(1);
            let timeout = tokio::time::sleep(config.wait_timeout);
            ResponseFuture::follower(waiter, rx, timeout, inner, req).await
        }
    }
}

/// The sharing policy of gRPC reads: a response is shared once its body
/// ended with `grpc-status: 0`. An error status releases the followers
/// without a hit-for-miss marker.
pub(crate) enum Grpc {}

impl Policy for Grpc {
    fn head<B: Body>(res: &Response<B>, cap: usize) -> Verdict {
        if res.status() != StatusCode::OK || failed_early(res.headers()) {
            return Verdict::Failed;
        }
        // The length is checked as the body is collected: gRPC bodies have none.
        if shareable(res.headers(), &Empty::<Bytes>::new(), cap) {
            Verdict::Share
        } else {
            Verdict::Release
        }
    }

    fn complete(parts: &Parts, body: &Collected) -> Verdict {
        if succeeded(&parts.headers, body) {
            return Verdict::Share;
        }
        // An error status in the trailers, or not one message.
        let failed = body
            .trailers
            .as_ref()
            .is_some_and(|t| t.get("grpc-status").is_some_and(|s| s != "0"));
        if failed {
            Verdict::Failed
        } else {
            Verdict::Release
        }
    }
}
