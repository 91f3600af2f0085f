use std::{
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    header::{
        AGE, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
        IF_NONE_MATCH, LAST_MODIFIED, VARY,
    },
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode,
};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::CacheBody,
    future::{Forward, Invalidate, ResponseFuture},
    layer::{CacheLayer, Settings, Shared},
    policy::{self, RequestCc, Use},
    store::{Entry, Memo, Variant},
};
use crate::{
    body::BufferedBody,
    key::{Key, KeyBuf, KeyRef, RequestHead},
};

/// Middleware that answers requests from an RFC 9111 shared cache.
///
/// See the [module docs](crate::cache) for what is stored and served.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CacheService<S> {
    /// Wraps `inner` in a cache with the defaults of [`CacheLayer::new`].
    pub fn new(inner: S) -> Self {
        CacheLayer::new().layer(inner)
    }

    /// Returns a new [`Layer`] that wraps services with a cache.
    pub fn layer() -> CacheLayer {
        CacheLayer::new()
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Gets a reference to the underlying service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the underlying service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the underlying service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let settings = &shared.settings;
        let now = Instant::now();
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            let invalidate = is_unsafe(req.method())
                .then(|| Invalidate::new(settings, &req).map(Box::new))
                .flatten();
            let forward = Forward::pass(shared, now, Fwd::Method, invalidate);
            return ResponseFuture::upstream(self.inner.call(req), forward);
        }
        // The key is built on the stack: a hit needs no owned copy.
        let mut buf = KeyBuf::new();
        let head = RequestHead::from_request(&req);
        if settings
            .key_options
            .write_key(&head, None, &mut buf)
            .is_none()
        {
            let forward = Forward::pass(shared, now, Fwd::Bypass, None);
            return ResponseFuture::upstream(self.inner.call(req), forward);
        }
        let key = KeyRef::new(buf.as_bytes());
        if let Some(entry) = shared.store.get(key) {
            return self.answer(req, key, Some(&entry), now);
        }
        let Some(fetch) = shared.store.fetch(key) else {
            return self.answer(req, key, None, now);
        };
        let key = key.to_key();
        // The second tier answers later: the ready service goes with the
        // request, a clone stays (it is polled ready before its own call).
        let clone = self.inner.clone();
        let mut service = Self {
            inner: std::mem::replace(&mut self.inner, clone),
            shared: shared.clone(),
        };
        ResponseFuture::fetching(
            fetch,
            Box::new(move |entry| service.answer(req, key.view(), entry.as_ref(), Instant::now())),
        )
    }
}

impl<S> CacheService<S> {
    /// Answers a GET or HEAD from `entry`, the stored variants of `key`,
    /// or sends it upstream.
    fn answer<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
        key: KeyRef<'_>,
        entry: Option<&Entry>,
        now: Instant,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send,
    {
        let shared = &self.shared;
        let settings = &shared.settings;
        let head = req.method() == Method::HEAD;
        let req_cc = RequestCc::parse(req.headers());
        let mut fwd = Fwd::UriMiss;
        let mut stale = None;
        if let Some(entry) = entry {
            fwd = Fwd::VaryMiss;
            if let Some(variant) = entry.iter().find(|v| v.matches(req.headers())) {
                let age = variant.age(now);
                let max_swr = settings.max_stale_while_revalidate;
                match policy::decide(&variant.cc, &req_cc, age, variant.lifetime, max_swr) {
                    Use::Fresh | Use::Stale => {
                        let res = serve(shared, variant, now, head, req.headers(), Status::HIT);
                        return ResponseFuture::ready(res);
                    }
                    Use::StaleWhileRevalidate => {
                        let status = Status {
                            detail: Some("stale-while-revalidate"),
                            ..Status::HIT
                        };
                        let res = serve(shared, variant, now, head, req.headers(), status);
                        self.refresh(req, key.to_key(), variant.clone(), req_cc, now);
                        return ResponseFuture::ready(res);
                    }
                    Use::Revalidate => {
                        // A fresh entry is only passed over at the client's request.
                        let fresh = variant.lifetime > age && !variant.cc.no_cache;
                        fwd = if fresh { Fwd::Request } else { Fwd::Stale };
                        stale = Some(variant.clone());
                    }
                }
            }
        }
        if req_cc.only_if_cached {
            return ResponseFuture::ready(gateway_timeout(shared));
        }
        let mut forward = Forward::pass(shared, now, fwd, None);
        forward.key = Some(key.to_key());
        forward.head = head;
        forward.req_cc = req_cc;
        forward.req_headers.keep(req.headers());
        forward.revalidating = stale.as_ref().is_some_and(|v| conditionalize(&mut req, v));
        forward.stale = stale;
        ResponseFuture::upstream(self.inner.call(req), forward)
    }

    /// Serves stale now and refreshes once in the background
    /// (stale-while-revalidate): the ready inner service takes the request.
    fn refresh<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
        key: Key,
        stale: Arc<Variant>,
        req_cc: RequestCc,
        now: Instant,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if stale.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut forward = Forward::pass(&self.shared, now, Fwd::Stale, None);
        forward.key = Some(key);
        forward.req_cc = req_cc;
        forward.req_headers.keep(req.headers());
        forward.revalidating = conditionalize(&mut req, &stale);
        forward.stale = Some(stale);
        // The entry is a GET's: refresh it with a GET even when a HEAD came.
        *req.method_mut() = Method::GET;
        let future = self.inner.call(req);
        runtime.spawn(forward.refresh(future));
    }
}

/// Methods that change state on the origin (RFC 9110 §9.2.1): all but the
/// safe ones, unknown methods included.
fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Replaces the client's validators with the stored ones; `false` when the
/// stored response has none (the request then fetches it anew).
fn conditionalize<B>(req: &mut Request<B>, stored: &Variant) -> bool {
    if !stored.has_validator() {
        return false;
    }
    let headers = req.headers_mut();
    headers.remove(IF_NONE_MATCH);
    headers.remove(IF_MODIFIED_SINCE);
    if let Some(etag) = stored.headers.get(ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.headers.get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
    true
}

/// Why a request went upstream (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    UriMiss,
    VaryMiss,
    Stale,
    Request,
    Bypass,
    Method,
}

impl Fwd {
    const COUNT: usize = Self::Method as usize + 1;

    fn as_str(self) -> &'static str {
        match self {
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
            Self::Bypass => "bypass",
            Self::Method => "method",
        }
    }
}

/// One RFC 9211 `Cache-Status` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<StatusCode>,
    pub(crate) ttl: Option<i64>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) detail: Option<&'static str>,
}

impl Status {
    const HIT: Self = Self {
        hit: true,
        fwd: None,
        fwd_status: None,
        ttl: None,
        stored: false,
        collapsed: false,
        detail: None,
    };

    /// A hit and nothing else to say but its TTL.
    fn is_plain_hit(&self) -> bool {
        Self { ttl: None, ..*self } == Self::HIT
    }

    /// Writes this entry, `name; hit; ttl=5`, to `buf`.
    fn write(&self, name: &str, buf: &mut BytesMut) {
        buf.extend_from_slice(name.as_bytes());
        if self.hit {
            buf.extend_from_slice(b"; hit");
        }
        if let Some(fwd) = self.fwd {
            buf.extend_from_slice(b"; fwd=");
            buf.extend_from_slice(fwd.as_str().as_bytes());
        }
        if let Some(status) = self.fwd_status {
            buf.extend_from_slice(b"; fwd-status=");
            buf.extend_from_slice(status.as_str().as_bytes());
        }
        if let Some(ttl) = self.ttl {
            buf.extend_from_slice(b"; ttl=");
            put_int(buf, ttl);
        }
        if self.stored {
            buf.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            buf.extend_from_slice(b"; collapsed");
        }
        if let Some(detail) = self.detail {
            buf.extend_from_slice(b"; detail=");
            buf.extend_from_slice(detail.as_bytes());
        }
    }

    /// Adds this entry to `headers`, after the members upstream caches put
    /// there (RFC 9211 §2: the list runs from the origin to the client).
    pub(crate) fn apply(&self, shared: &Shared, headers: &mut HeaderMap) {
        let Some(header) = &shared.settings.status_header else {
            return;
        };
        let value = if headers.contains_key(header) {
            let mut buf = BytesMut::with_capacity(96);
            for upstream in headers.get_all(header) {
                buf.extend_from_slice(upstream.as_bytes());
                buf.extend_from_slice(b", ");
            }
            self.write(&shared.settings.status_name, &mut buf);
            HeaderValue::from_maybe_shared(buf.freeze()).ok()
        } else {
            shared.forwarded.get(self, &shared.settings.status_name)
        };
        if let Some(value) = value {
            headers.insert(header.clone(), value);
        }
    }

    fn to_value(self, name: &str) -> Option<HeaderValue> {
        let mut buf = BytesMut::with_capacity(name.len() + 64);
        self.write(name, &mut buf);
        HeaderValue::from_maybe_shared(buf.freeze()).ok()
    }
}

/// The last `Cache-Status` value made for each `fwd` reason: forwarded
/// responses mostly repeat one (`fwd=uri-miss; fwd-status=200`).
#[derive(Debug, Default)]
pub(crate) struct StatusValues([Memo<Status, Option<HeaderValue>>; Fwd::COUNT]);

impl StatusValues {
    /// The value of `status`, a forwarded one (`fwd` set, no `ttl`).
    fn get(&self, status: &Status, name: &str) -> Option<HeaderValue> {
        match status.fwd {
            Some(fwd) => self.0[fwd as usize].get(*status, || status.to_value(name)),
            None => status.to_value(name),
        }
    }
}

/// Writes the decimal digits of `n`.
fn put_int(buf: &mut BytesMut, n: i64) {
    if n < 0 {
        buf.put_u8(b'-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Headers a 304 carries (RFC 9110 §15.4.5).
const NOT_MODIFIED_HEADERS: [http::HeaderName; 7] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    LAST_MODIFIED,
    VARY,
];

/// Answers a request from a stored response: the full response (no body
/// for HEAD), or 304 when the request's conditionals match. `Age` is set.
pub(crate) fn serve<B>(
    shared: &Shared,
    variant: &Variant,
    now: Instant,
    head: bool,
    req_headers: &HeaderMap,
    mut status: Status,
) -> Response<CacheBody<B>> {
    let age = variant.age(now);
    let not_modified = policy::not_modified(req_headers, variant.status, &variant.headers);
    let body = if head || not_modified {
        BufferedBody::empty()
    } else {
        variant.body.body()
    };
    let age = age.as_secs().min(policy::DELTA_MAX);
    status.ttl = Some(variant.lifetime.as_secs().min(policy::DELTA_MAX) as i64 - age as i64);
    let settings = &shared.settings;
    // The stored headers with this hit's `Age` and `Cache-Status`, which
    // replace their placeholders in place, with no reallocation.
    let make = || {
        let mut headers = variant.headers.clone();
        let (age, status) = hit_values(settings, age, &status);
        if let Some(age) = age {
            headers.insert(AGE, age);
        }
        if let (Some(header), Some(status)) = (&settings.status_header, status) {
            headers.insert(header.clone(), status);
        }
        Arc::new(headers)
    };
    // A plain hit's headers depend on its age and on the settings (layers
    // built from one builder share a store): the hits of one second share
    // them, and each costs one clone of the map.
    let headers = if status.is_plain_hit() {
        let settings_id = std::ptr::from_ref(settings) as usize;
        variant.hit_headers.get((age, settings_id), make)
    } else {
        make()
    };
    let mut res = Response::new(CacheBody::cached(body));
    if not_modified {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let out = res.headers_mut();
        let names = NOT_MODIFIED_HEADERS.iter().chain([&AGE]);
        for name in names.chain(settings.status_header.as_ref()) {
            for value in headers.get_all(name) {
                out.append(name.clone(), value.clone());
            }
        }
    } else {
        *res.status_mut() = variant.status;
        *res.headers_mut() = HeaderMap::clone(&headers);
    }
    res
}

/// The `Age` and `Cache-Status` values of a hit; one allocation holds both.
fn hit_values(
    settings: &Settings,
    age: u64,
    status: &Status,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut buf = BytesMut::with_capacity(settings.status_name.len() + 64);
    put_int(&mut buf, age as i64);
    let age = HeaderValue::from_maybe_shared(buf.split().freeze()).ok();
    let status = settings.status_header.as_ref().and_then(|_| {
        status.write(&settings.status_name, &mut buf);
        HeaderValue::from_maybe_shared(buf.freeze()).ok()
    });
    (age, status)
}

/// The answer to `only-if-cached` when nothing usable is stored (RFC 9111 §5.2.1.7).
fn gateway_timeout<B>(shared: &Shared) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::cached(BufferedBody::empty()));
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let status = Status {
        detail: Some("only-if-cached"),
        ..Status::default()
    };
    status.apply(shared, res.headers_mut());
    res
}
