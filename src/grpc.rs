//! Idempotent gRPC reads: which unary calls the cache and the coalescing
//! layer may answer for one another.
//!
//! gRPC calls are `POST`s whose request message is in the body, so by HTTP's
//! rules neither [`cache`](crate::cache) nor [`coalesce`](crate::coalesce)
//! touches them. An operator who knows that some methods are idempotent reads
//! (`GetProduct`, not `PutProduct`) declares them with [`GrpcReads`] and
//! hands it to the layers:
//!
//! ```
//! # #[cfg(all(feature = "cache", feature = "coalesce"))]
//! # {
//! use std::time::Duration;
//!
//! use tower_perf::{cache::CacheLayer, coalesce::CoalesceLayer, grpc::GrpcReads};
//!
//! let reads = GrpcReads::new()
//!     .method("/catalog.v1.Catalog/GetProduct")
//!     .method_ttl("/catalog.v1.Catalog/ListCategories", Duration::from_secs(300))
//!     .ttl(Duration::from_secs(10))
//!     .max_message_size(4 * 1024);
//! let cache = CacheLayer::new().grpc_reads(reads.clone());
//! let coalesce = CoalesceLayer::new().grpc_reads(reads);
//! # let _ = (cache, coalesce);
//! # }
//! ```
//!
//! With tonic, add them (or [`PerfStack::grpc_reads`](crate::stack::PerfStack::grpc_reads))
//! to `Server::builder().layer(...)`; the repository's `tonic` example runs it.
//!
//! # What is cached and coalesced
//!
//! A call is a *declared read* when it is gRPC (`content-type:
//! application/grpc*`), a `POST`, and its method path (`/package.Service/Method`)
//! was declared with [`method`](GrpcReads::method) /
//! [`method_ttl`](GrpcReads::method_ttl) or is accepted by
//! [`predicate`](GrpcReads::predicate). Its request body is read, up to
//! [`max_message_size`](GrpcReads::max_message_size), and must be exactly one
//! length-prefixed message with no trailers (a unary request). The key is the
//! layer's usual key ([`KeyOptions`](crate::key::KeyOptions): scheme,
//! authority, path, the headers you listed, or your key function), its
//! `grpc-encoding` and `grpc-accept-encoding`, and the framed message bytes:
//! two calls share an entry or a flight only when they sent the same message.
//!
//! - **Coalescing**: identical declared reads in flight share one call of the
//!   inner service. The response is shared once its body ended with
//!   `grpc-status: 0` (in the trailers, or in the headers of a trailers-only
//!   response) and at most one message; followers receive the message and
//!   the trailers. Any other outcome releases the followers to make their own
//!   calls, without the hit-for-miss marker when the status was an error (the
//!   next call may well succeed).
//! - **Caching**: a successful response (same conditions, within the cache's
//!   `max_body_size`, without `Set-Cookie` unless allowed, without
//!   `cache-control: no-store` or `private` metadata) is stored and replayed
//!   with its headers and trailers, plus `Age` and `Cache-Status`. gRPC
//!   responses carry no HTTP freshness, so the operator sets it: the
//!   method's [`method_ttl`](GrpcReads::method_ttl), else
//!   [`ttl`](GrpcReads::ttl), else the cache's
//!   [`default_ttl`](crate::cache::CacheLayer::default_ttl). With none of
//!   them the call is coalesced but never stored. A stale entry is simply
//!   fetched again (gRPC has no validators). Purge entries by method with
//!   [`CacheHandle::purge_path_prefix`](crate::cache::CacheHandle::purge_path_prefix)
//!   (e.g. after a `PutProduct`), or by tag through the cache's tag header
//!   sent as response metadata.
//! - **Everything else passes through unchanged**: error statuses, calls whose
//!   message is over the cap or that are not one message (client streaming),
//!   responses that are not one message (server streaming), undeclared
//!   methods, and every non-gRPC request, which keeps the HTTP semantics of
//!   each layer exactly.
//!
//! Declare only methods whose answer depends on the message and the keyed
//! metadata alone. A call with `authorization` metadata is neither cached
//! nor coalesced (each caller's answer is its own) unless `authorization` is
//! one of the key's headers (`KeyOptions::header(AUTHORIZATION)`; for the
//! coalescer also turn off `bypass_credentials`). gRPC-Web calls, whose
//! status travels in the body, are never declared reads.
//!
//! # The request body
//!
//! Building the key reads the request body, yet the inner service must still
//! receive the call. The layers configured with [`GrpcReads`] are distinct
//! types ([`GrpcCacheLayer`](crate::cache::GrpcCacheLayer),
//! [`GrpcCoalesceLayer`](crate::coalesce::GrpcCoalesceLayer)): only they hand
//! the inner service a [`GrpcBody<B>`], which is the untouched body `B` for
//! every call not read, and the buffered message (or what was read followed
//! by the rest of `B`) for the others. The plain layers keep passing `B` as
//! is, with no new bounds, so hyper's `Incoming` and every existing user
//! keep working.
//!
//! Why a body type of the crate rather than a trait to rebuild the caller's
//! body type from bytes: tonic's generated `Routes`, axum's `Router` and
//! `Route` all accept `Request<B>` for any body `B` with `Data = Bytes`,
//! `Send + 'static`, whose error converts into a `BoxError`. `GrpcBody<B>`
//! is such a body whenever `B` is, so the layers work in
//! `Server::builder().layer`, in `axum::Router::layer` and under hyper with
//! no conversion and no dependency on tonic. A trait could not be implemented
//! for hyper's `Incoming` (it cannot be built from bytes) and would tie the
//! crate to each host's body type. The one place it does not fit is an inner
//! middleware that insists on one concrete body type (such as
//! `axum::middleware::from_fn`): put it outside these layers, or map the body
//! with `axum::body::Body::new`.

use std::{
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{collect_capped, Capped, Collected, Replay, Replayable};

/// Default cap on a read's request message: 16 KiB.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// The length prefix of a gRPC message: a compression flag and a `u32` length.
const PREFIX: usize = 5;

type Predicate = dyn Fn(&str) -> bool + Send + Sync;

/// The gRPC methods that are idempotent reads, and how to cache them; see
/// the [module docs](self). Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct GrpcReads(Arc<Reads>);

#[derive(Clone)]
struct Reads {
    methods: HashMap<Box<str>, Option<Duration>>,
    predicate: Option<Arc<Predicate>>,
    ttl: Option<Duration>,
    max_message_size: usize,
}

impl fmt::Debug for GrpcReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcReads")
            .field("methods", &self.0.methods)
            .field("predicate", &self.0.predicate.as_ref().map(|_| "<fn>"))
            .field("ttl", &self.0.ttl)
            .field("max_message_size", &self.0.max_message_size)
            .finish()
    }
}

impl Default for Reads {
    fn default() -> Self {
        Self {
            methods: HashMap::new(),
            predicate: None,
            ttl: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl GrpcReads {
    /// No method declared (nothing is read), messages up to 16 KiB, no TTL
    /// of its own.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, f: impl FnOnce(&mut Reads)) -> Self {
        f(Arc::make_mut(&mut self.0));
        self
    }

    /// Declares the method at `path` (`/package.Service/Method`) a unary,
    /// idempotent read.
    pub fn method(self, path: impl Into<String>) -> Self {
        self.insert(path.into(), None)
    }

    /// Declares the method at `path` a unary, idempotent read whose
    /// successful responses stay fresh for `ttl` in the cache.
    pub fn method_ttl(self, path: impl Into<String>, ttl: Duration) -> Self {
        self.insert(path.into(), Some(ttl))
    }

    fn insert(self, path: String, ttl: Option<Duration>) -> Self {
        self.with(|r| {
            r.methods.insert(path.into_boxed_str(), ttl);
        })
    }

    /// Also declares every method whose path `f` accepts (e.g. all methods
    /// of a service whose name starts with `Get`).
    pub fn predicate<F>(self, f: F) -> Self
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.with(|r| r.predicate = Some(Arc::new(f)))
    }

    /// How long a stored response stays fresh when its method has no TTL of
    /// its own (default: the cache's `default_ttl`, if set).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|r| r.ttl = Some(ttl))
    }

    /// The largest request message read to build a key (default 16 KiB). A
    /// larger call passes through, its body replayed to the inner service.
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.with(|r| r.max_message_size = bytes)
    }

    /// The method path of `req` when it is a declared read.
    pub(crate) fn declared<'a, B>(&self, req: &'a Request<B>) -> Option<&'a str> {
        if req.method() != Method::POST {
            return None;
        }
        // gRPC-Web carries its status in the body, not in trailers.
        let web = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"));
        if web {
            return None;
        }
        let path = crate::route::grpc_method(req)?;
        let declared =
            self.0.methods.contains_key(path) || self.0.predicate.as_ref().is_some_and(|f| f(path));
        declared.then_some(path)
    }

    /// The freshness of a stored response of `path`, if one was set here.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn ttl_for(&self, path: &str) -> Option<Duration> {
        self.0.methods.get(path).copied().flatten().or(self.0.ttl)
    }

    /// Reads a declared call's request body: the unary message when the
    /// body is exactly one message within the cap, and the body to hand the
    /// inner service (which replays what was read).
    pub(crate) async fn read<B>(&self, body: B) -> (Option<Bytes>, GrpcBody<B>)
    where
        B: Body<Data = Bytes>,
    {
        let cap = self.0.max_message_size.saturating_add(PREFIX);
        match collect_capped(body, cap).await {
            Capped::Complete(collected) => {
                let unary = collected.trailers.is_none() && messages(&collected.data) == Some(1);
                let message = unary.then(|| collected.data.clone());
                (message, GrpcBody::buffered(&collected))
            }
            Capped::Partial(rest) => (None, GrpcBody::replay(rest)),
        }
    }
}

/// The number of whole length-prefixed messages in `data`; `None` when it
/// is not a sequence of whole messages.
pub(crate) fn messages(mut data: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !data.is_empty() {
        let (prefix, rest) = data.split_at_checked(PREFIX)?;
        if prefix[0] > 1 {
            return None;
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        data = rest.get(len..)?;
        n += 1;
    }
    Some(n)
}

/// Whether a unary response succeeded and can be replayed: `grpc-status: 0`
/// (in the headers of a trailers-only response, or in the trailers) and a
/// body of at most one whole message.
pub(crate) fn succeeded(headers: &HeaderMap, body: &Collected) -> bool {
    let status = match headers.get(GRPC_STATUS) {
        Some(status) => body.data.is_empty().then_some(status),
        None => body.trailers.as_ref().and_then(|t| t.get(GRPC_STATUS)),
    };
    status.is_some_and(|s| s == "0") && messages(&body.data).is_some_and(|n| n <= 1)
}

/// Whether a response's headers already say the call failed (a
/// trailers-only error response).
pub(crate) fn failed_early(headers: &HeaderMap) -> bool {
    headers.get(GRPC_STATUS).is_some_and(|s| s != "0")
}

const GRPC_STATUS: &str = "grpc-status";

pin_project! {
    /// The request body that the gRPC-read layers
    /// ([`GrpcCacheLayer`](crate::cache::GrpcCacheLayer),
    /// [`GrpcCoalesceLayer`](crate::coalesce::GrpcCoalesceLayer)) hand their
    /// inner service: the caller's body untouched, or, for a declared read
    /// whose body was read, the same bytes and trailers replayed from memory
    /// (followed by the unread rest of the body when it was over the cap).
    pub struct GrpcBody<B: Body> {
        #[pin]
        body: Replayable<B>,
    }
}

impl<B: Body> GrpcBody<B> {
    /// The caller's body, untouched.
    pub fn new(body: B) -> Self {
        Self {
            body: Replayable::Untouched { body },
        }
    }

    fn buffered(collected: &Collected) -> Self {
        Self {
            body: Replayable::Buffered {
                body: collected.body(),
            },
        }
    }

    fn replay(body: Replay<B>) -> Self {
        Self {
            body: Replayable::Replayed { body },
        }
    }
}

impl<B> Body for GrpcBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> fmt::Debug for GrpcBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcBody").field(&self.body.kind()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn grpc(path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
        Request::post(path)
            .header("content-type", "application/grpc")
            .body(Full::from(body))
            .unwrap()
    }

    #[test]
    fn message_framing() {
        assert_eq!(messages(b""), Some(0));
        assert_eq!(messages(&frame(0, b"abc")), Some(1));
        assert_eq!(messages(&frame(1, b"")), Some(1));
        let two = [frame(0, b"a"), frame(0, b"bc")].concat();
        assert_eq!(messages(&two), Some(2));
        assert_eq!(messages(&frame(2, b"a")), None, "unknown flag");
        assert_eq!(messages(&frame(0, b"abc")[..6]), None, "cut short");
        assert_eq!(messages(&[0, 0, 0]), None, "partial prefix");
        assert_eq!(messages(&[0, 255, 255, 255, 255]), None, "huge length");
    }

    #[test]
    fn declared_methods_and_ttls() {
        let reads = GrpcReads::new()
            .method("/a.S/Get")
            .method_ttl("/a.S/List", Duration::from_secs(9))
            .predicate(|p| p.starts_with("/b.S/Get"))
            .ttl(Duration::from_secs(1));
        let body = || frame(0, b"x");
        assert_eq!(reads.declared(&grpc("/a.S/Get", body())), Some("/a.S/Get"));
        assert!(reads.declared(&grpc("/b.S/GetAll", body())).is_some());
        assert!(reads.declared(&grpc("/a.S/Put", body())).is_none());
        let mut get = grpc("/a.S/Get", body());
        *get.method_mut() = Method::GET;
        assert!(reads.declared(&get).is_none(), "gRPC calls are POSTs");
        let mut json = grpc("/a.S/Get", body());
        json.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        assert!(reads.declared(&json).is_none(), "not gRPC");
        let mut web = grpc("/a.S/Get", body());
        web.headers_mut().insert(
            "content-type",
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert!(reads.declared(&web).is_none(), "gRPC-Web");
        assert_eq!(reads.ttl_for("/a.S/List"), Some(Duration::from_secs(9)));
        assert_eq!(reads.ttl_for("/a.S/Get"), Some(Duration::from_secs(1)));
        assert_eq!(GrpcReads::new().ttl_for("/a.S/Get"), None);
    }

    #[tokio::test]
    async fn read_keeps_every_byte_for_the_inner_service() {
        let reads = GrpcReads::new().max_message_size(4);
        // One message within the cap: the key material, replayed.
        let one = frame(0, b"abcd");
        let (message, body) = reads.read(Full::from(one.clone())).await;
        assert_eq!(message.as_deref(), Some(&one[..]));
        assert_eq!(body.collect().await.unwrap().to_bytes(), one);
        // Over the cap, in several chunks: no key, the whole body replayed.
        let big = frame(0, b"abcdefgh");
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = big
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks));
        let (message, body) = reads.read(body).await;
        assert!(message.is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), big);
        // Two messages (client streaming): not a read, replayed.
        let two = [frame(0, b"a"), frame(0, b"b")].concat();
        let (message, body) = reads.read(Full::from(two.clone())).await;
        assert!(message.is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), two);
    }

    #[test]
    fn success_needs_status_zero_and_one_message() {
        let ok = |status: &str| {
            let mut t = HeaderMap::new();
            t.insert(GRPC_STATUS, status.parse().unwrap());
            t
        };
        let body = |data: Vec<u8>, trailers: Option<HeaderMap>| Collected {
            data: data.into(),
            trailers,
        };
        let none = HeaderMap::new();
        assert!(succeeded(&none, &body(frame(0, b"m"), Some(ok("0")))));
        assert!(!succeeded(&none, &body(frame(0, b"m"), Some(ok("5")))));
        assert!(!succeeded(&none, &body(frame(0, b"m"), None)));
        let two = [frame(0, b"a"), frame(0, b"b")].concat();
        assert!(!succeeded(&none, &body(two, Some(ok("0")))), "streaming");
        // Trailers-only responses.
        assert!(succeeded(&ok("0"), &body(vec![], None)));
        assert!(!succeeded(&ok("14"), &body(vec![], None)));
        assert!(failed_early(&ok("14")));
        assert!(!failed_early(&ok("0")));
        assert!(!failed_early(&none));
    }
}
