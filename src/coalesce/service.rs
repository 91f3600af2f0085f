use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::CoalesceBody,
    flight::{Join, Shared},
    future::{Forget, Leader, ResponseFuture},
    layer::Config,
    CoalesceLayer,
};
use crate::key::{Key, KeyBuf, RequestHead};

/// Identical in-flight `GET`/`HEAD` requests share one call of the inner
/// service. Built by [`CoalesceLayer`]; see the [module docs](crate::coalesce).
#[derive(Clone)]
pub struct Coalesce<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the default settings ([`CoalesceLayer::new`]).
    pub fn new(inner: S) -> Self {
        CoalesceLayer::new().layer(inner)
    }

    /// A layer with the default settings, to tune with its builder methods.
    pub fn layer() -> CoalesceLayer {
        CoalesceLayer::new()
    }

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

impl<S: fmt::Debug> fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<CoalesceBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let mut key = KeyBuf::new();
        let join = match classify(&shared.config, &req, &mut key) {
            Class::Key => shared.join(key.as_bytes()),
            Class::Bypass => Join::Bypass,
            Class::Write(target) => {
                shared.counters.bypass.increment(1);
                // Forgotten now and again when the write ends.
                let forget = target.map(|target| {
                    shared.forget(&target);
                    Forget {
                        shared: shared.clone(),
                        target,
                    }
                });
                return ResponseFuture::inner(self.inner.call(req), forget);
            }
        };
        match join {
            Join::Bypass => {
                shared.counters.bypass.increment(1);
                ResponseFuture::inner(self.inner.call(req), None)
            }
            Join::Lead(publisher) => {
                shared.counters.leader.increment(1);
                // The instance polled ready is the one called; should `call`
                // panic, the dropped publisher retires the flight.
                let fut = self.inner.call(req);
                ResponseFuture::leader(Leader::new(fut, publisher))
            }
            Join::Follow(waiter, rx) => {
                shared.counters.follower.increment(1);
                let timeout = tokio::time::sleep(shared.config.wait_timeout);
                // A clone, polled ready only if this follower must go upstream:
                // waiting holds no reservation of the inner service.
                ResponseFuture::follower(waiter, rx, timeout, self.inner.clone(), req)
            }
        }
    }
}

enum Class {
    /// A coalescable read (its key is in the caller's buffer).
    Key,
    /// Passed through untouched.
    Bypass,
    /// An unsafe method, with the key of its target (when it has one).
    Write(Option<Key>),
}

/// Headers that make a response differ from the one for the plain request.
const CONDITIONAL: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

fn classify<B: Body>(config: &Config, req: &Request<B>, key: &mut KeyBuf) -> Class {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let safe = method == Method::OPTIONS || method == Method::TRACE;
        return if safe {
            Class::Bypass
        } else {
            Class::Write(write_target(config, req))
        };
    }
    let body = req.body();
    let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
    // One pass over the (few) request headers rather than nine lookups.
    let credentials = config.bypass_credentials;
    let mut host = None;
    let differs = req.headers().iter().any(|(name, value)| {
        if name == header::HOST && host.is_none() {
            // The first, as `HeaderMap::get` has it.
            host = Some(value);
        }
        CONDITIONAL.contains(name)
            || (credentials && (name == header::AUTHORIZATION || name == header::COOKIE))
    });
    if !empty || differs {
        return Class::Bypass;
    }
    let head = RequestHead::from_request(req);
    match config
        .key
        .write_key_with_host(&head, Some(method), || host, key)
    {
        Some(()) => Class::Key,
        None => Class::Bypass,
    }
}

/// The key of a write's target, without method and request-header lines:
/// the prefix shared by the keys of all reads of that target.
fn write_target<B>(config: &Config, req: &Request<B>) -> Option<Key> {
    let key = config.key.key(&RequestHead::from_request(req), None)?;
    let bytes = key.as_bytes();
    match bytes.iter().position(|b| *b == b'\n') {
        Some(end) => Some(Key::from_bytes(Bytes::copy_from_slice(&bytes[..end]))),
        None => Some(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_requests_are_keyed_with_their_first_host() {
        let config = Config::default();
        let req = Request::get("/items?x=1")
            .header(header::ACCEPT, "*/*")
            .header(header::HOST, "example.com")
            .header(header::HOST, "other.example")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let mut buf = KeyBuf::new();
        assert!(matches!(classify(&config, &req, &mut buf), Class::Key));
        assert_eq!(buf.as_bytes(), b"GET http://example.com/items?x=1");
        let owned = config
            .key
            .key(&RequestHead::from_request(&req), Some(&Method::GET));
        assert_eq!(buf.as_bytes(), owned.unwrap().as_bytes());
    }
}
