use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{
    header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_LOCATION, LOCATION},
    Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri,
};
use http_body::{Body, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{
    body::{CacheBody, Inserter},
    layer::{Settings, Shared},
    policy::{self, RequestCc, ResponseCc, StoreRequest, Vary},
    service::{serve, Fwd, Status},
    store::{self, Entry, Fetch, Freshness, Timing, Variant},
};
use crate::{
    body::{collect_capped, Capped, Sink, Tee},
    key::{Key, RequestHead},
};

pin_project! {
    /// Response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Upstream { #[pin] future: F, forward: Option<Box<Forward>> },
        Fetching { fetch: Fetch, then: Option<Then<F, B>> },
    }
}

/// What a request does once the second tier answered: serve the entry it
/// found or go upstream (the ready inner service is inside).
pub(crate) type Then<F, B> =
    Box<dyn FnOnce(Option<Entry>) -> ResponseFuture<F, B> + Send + 'static>;

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn fetching(fetch: Fetch, then: Then<F, B>) -> Self {
        Self {
            state: State::Fetching {
                fetch,
                then: Some(then),
            },
        }
    }

    pub(crate) fn upstream(future: F, forward: Box<Forward>) -> Self {
        Self {
            state: State::Upstream {
                future,
                forward: Some(forward),
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready { .. } => "Ready",
            State::Upstream { .. } => "Upstream",
            State::Fetching { .. } => "Fetching",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let StateProj::Fetching { fetch, then } = self.as_mut().project().state.project() {
            let entry = ready!(fetch.as_mut().poll(cx));
            let then = then.take().expect("polled after completion");
            self.set(then(entry));
        }
        match self.project().state.project() {
            StateProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StateProj::Upstream { future, forward } => {
                let result = ready!(future.poll(cx));
                let forward = forward.take().expect("polled after completion");
                Poll::Ready(match result {
                    Ok(res) => Ok(forward.respond(res)),
                    Err(e) => forward.stale_for_error(None).ok_or(e),
                })
            }
            // `then` never answers with another fetch.
            StateProj::Fetching { .. } => unreachable!("a fetch is followed by an answer"),
        }
    }
}

/// What a forwarded request needs once its response arrives.
pub(crate) struct Forward {
    pub(crate) shared: Arc<Shared>,
    pub(crate) request_time: Instant,
    pub(crate) fwd: Fwd,
    /// The key, for GET and HEAD requests that may be answered or stored.
    pub(crate) key: Option<Key>,
    pub(crate) head: bool,
    pub(crate) req_cc: RequestCc,
    /// The client's request headers (selecting headers, conditionals).
    pub(crate) req_headers: KeptHeaders,
    /// The stored response that could not be served as is.
    pub(crate) stale: Option<Arc<Variant>>,
    /// Whether the request carries the stored response's validators.
    pub(crate) revalidating: bool,
    /// Unsafe methods only (boxed: every read carries the field).
    pub(crate) invalidate: Option<Box<Invalidate>>,
}

/// The client's request headers, kept for when its response arrives: a
/// response that varies is stored with the request's selecting headers, and
/// a refreshed or stale response answers its conditionals. A request with
/// few headers (most API calls) keeps them in the boxed `Forward` itself
/// rather than in a copy of the map: two allocations fewer per miss.
// Large on purpose: it lives in the boxed `Forward`, never on its own.
#[allow(clippy::large_enum_variant)]
pub(crate) enum KeptHeaders {
    Few([Option<(HeaderName, HeaderValue)>; KeptHeaders::FEW]),
    Map(HeaderMap),
}

impl KeptHeaders {
    const FEW: usize = 8;

    /// Keeps `headers`, in place (the set is empty until then).
    pub(crate) fn keep(&mut self, headers: &HeaderMap) {
        match self {
            Self::Few(few) if headers.len() <= Self::FEW => {
                for (slot, (name, value)) in few.iter_mut().zip(headers) {
                    *slot = Some((name.clone(), value.clone()));
                }
            }
            _ => *self = Self::Map(headers.clone()),
        }
    }

    /// The values of `name`, in the request's order.
    pub(crate) fn get_all<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        let (few, map) = match self {
            Self::Few(few) => (Some(few), None),
            Self::Map(map) => (None, Some(map)),
        };
        let few = few.into_iter().flatten().flatten();
        few.filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
            .chain(map.into_iter().flat_map(move |map| map.get_all(name)))
    }

    /// The headers as a map, for the answers that read the conditionals.
    pub(crate) fn to_map(&self) -> Cow<'_, HeaderMap> {
        match self {
            Self::Few(few) => Cow::Owned(few.iter().flatten().cloned().collect()),
            Self::Map(map) => Cow::Borrowed(map),
        }
    }
}

/// What becomes of an upstream response.
enum Outcome {
    /// A 304 refreshed the stored response: serve it.
    Refreshed(Arc<Variant>),
    /// Store the response once its body is complete.
    Store(Inserter),
    /// Pass it on untouched.
    Pass,
}

impl Forward {
    /// A request that is not answered from the cache. Boxed from the
    /// start: a read's fields are then filled in place.
    pub(crate) fn pass(
        shared: &Arc<Shared>,
        request_time: Instant,
        fwd: Fwd,
        invalidate: Option<Box<Invalidate>>,
    ) -> Box<Self> {
        Box::new(Self {
            shared: shared.clone(),
            request_time,
            fwd,
            key: None,
            head: false,
            req_cc: RequestCc::default(),
            req_headers: KeptHeaders::Few(Default::default()),
            stale: None,
            revalidating: false,
            invalidate,
        })
    }

    /// What becomes of a response; `size_hint` is its body's (a lower bound
    /// over the cap skips storing). A full response that replaces a stored
    /// one but is not stored itself removes it: the stored one is outdated.
    fn classify(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        size_hint: &SizeHint,
    ) -> Outcome {
        let outcome = self.outcome(status, headers, size_hint);
        if let (Outcome::Pass, Some(_), Some(key)) = (&outcome, &self.stale, &self.key) {
            // A HEAD's answer has no body to replace the stored one with.
            let full = !self.head && status != StatusCode::NOT_MODIFIED;
            if full && !status.is_server_error() {
                self.shared.store.remove(key);
            }
        }
        outcome
    }

    /// The key goes with a response to store (an `Inserter`).
    fn outcome(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        size_hint: &SizeHint,
    ) -> Outcome {
        let Some(key) = &self.key else {
            return Outcome::Pass;
        };
        let settings = &self.shared.settings;
        let timing = || Timing::now(self.request_time, settings.default_ttl);
        if status == StatusCode::NOT_MODIFIED {
            return match (&self.stale, self.revalidating) {
                (Some(stale), true) => {
                    let variant = Arc::new(stale.refreshed(
                        headers,
                        timing(),
                        settings.status_header.as_ref(),
                    ));
                    store::put_variant(&*self.shared.store, key.clone(), variant.clone());
                    Outcome::Refreshed(variant)
                }
                _ => Outcome::Pass,
            };
        }
        let cap = settings.max_body_size;
        if self.head
            || size_hint.lower() > cap as u64
            || content_length(headers).is_some_and(|l| l > cap)
            || (settings.default_ttl.is_none() && !policy::has_freshness_information(headers))
        {
            return Outcome::Pass;
        }
        let cc = ResponseCc::parse(headers);
        let freshness = || Freshness::with_cc(cc, status, headers, timing());
        // Dates and the clock are read only for a response not refused first.
        let mut fresh = None;
        let authorization = self.req_headers.get_all(&AUTHORIZATION).next().is_some();
        let req = StoreRequest::new(authorization, self.req_cc, settings.store_set_cookie);
        let fresh_for = || fresh.insert(freshness()).fresh_for();
        if policy::storable(&req, status, headers, &cc, fresh_for).is_err() {
            return Outcome::Pass;
        }
        let fresh = fresh.unwrap_or_else(freshness);
        let Vary::Names(names) = policy::vary(headers) else {
            return Outcome::Pass;
        };
        let tag_header = settings.tag_header.as_ref();
        let mut variant = Variant::new(
            status,
            policy::headers_to_store(headers, tag_header),
            fresh,
            settings.status_header.as_ref(),
        );
        variant.vary = names
            .into_iter()
            .map(|name| {
                let value = policy::selecting_value(self.req_headers.get_all(&name), &name);
                (name, value)
            })
            .collect();
        if let Some(tag_header) = tag_header {
            variant.tags = tags(headers, tag_header);
        }
        match self.key.take() {
            Some(key) => Outcome::Store(Inserter {
                shared: self.shared.clone(),
                key,
                variant: Arc::new(variant),
                grpc: false,
            }),
            None => Outcome::Pass,
        }
    }

    /// Turns the upstream response into the client's, in place: the
    /// response is moved once, when its body is wrapped.
    fn respond<B>(mut self: Box<Self>, mut res: Response<B>) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes>,
    {
        let upstream = res.status();
        if upstream.is_server_error() {
            if let Some(stale) = self.stale_for_error(Some(upstream)) {
                return stale;
            }
        }
        if let Some(invalidate) = &self.invalidate {
            if upstream.is_success() || upstream.is_redirection() {
                invalidate.run(&self.shared, res.headers());
            }
        }
        let mut status = Status {
            fwd: Some(self.fwd),
            fwd_status: Some(upstream),
            collapsed: is_collapsed(res.extensions()),
            ..Status::default()
        };
        let inserter = match self.classify(upstream, res.headers(), &res.body().size_hint()) {
            Outcome::Refreshed(variant) => {
                status.stored = true;
                let now = Instant::now();
                return serve(
                    &self.shared,
                    &variant,
                    now,
                    self.head,
                    &self.req_headers.to_map(),
                    status,
                );
            }
            Outcome::Store(inserter) => {
                status.stored = true;
                Some(inserter)
            }
            Outcome::Pass => None,
        };
        // Both are addressed to this cache. One pass over the names is
        // cheaper than hashing them for two removals that mostly find nothing.
        let headers = res.headers_mut();
        let tag_header = self.shared.settings.tag_header.as_ref();
        if headers
            .keys()
            .any(|name| name == policy::SURROGATE_CONTROL || Some(name) == tag_header)
        {
            headers.remove(policy::SURROGATE_CONTROL);
            if let Some(tag_header) = tag_header {
                headers.remove(tag_header);
            }
        }
        status.apply(&self.shared, headers);
        let cap = self.shared.settings.max_body_size;
        res.map(|body| {
            CacheBody::upstream(match inserter {
                Some(inserter) => Tee::new(body, cap, inserter),
                None => Tee::passthrough(body),
            })
        })
    }

    /// The stale response, when `stale-if-error` lets it answer for an
    /// upstream error (`None`) or a 5xx.
    fn stale_for_error<B>(&self, upstream: Option<StatusCode>) -> Option<Response<CacheBody<B>>> {
        let stale = self.stale.as_ref()?;
        let now = Instant::now();
        let settings = &self.shared.settings;
        if !policy::stale_if_error(
            &stale.cc,
            &self.req_cc,
            stale.staleness(now),
            settings.max_stale_if_error,
        ) {
            return None;
        }
        let status = Status {
            hit: true,
            fwd_status: upstream,
            detail: Some("stale-if-error"),
            ..Status::default()
        };
        Some(serve(
            &self.shared,
            stale,
            now,
            self.head,
            &self.req_headers.to_map(),
            status,
        ))
    }

    /// Runs a stale-while-revalidate refresh to its end in the background.
    pub(crate) async fn refresh<F, B, E>(mut self: Box<Self>, future: F)
    where
        F: Future<Output = Result<Response<B>, E>>,
        B: Body<Data = Bytes>,
    {
        // Lets a later request try again if this refresh stores nothing.
        struct Done(Option<Arc<Variant>>);
        impl Drop for Done {
            fn drop(&mut self) {
                if let Some(v) = &self.0 {
                    v.refreshing.store(false, Ordering::Release);
                }
            }
        }
        let _done = Done(self.stale.clone());
        let Ok(res) = future.await else { return };
        let (parts, body) = res.into_parts();
        if let Outcome::Store(inserter) =
            self.classify(parts.status, &parts.headers, &body.size_hint())
        {
            let cap = self.shared.settings.max_body_size;
            if let Capped::Complete(collected) = collect_capped(body, cap).await {
                Sink::complete(inserter, collected);
            }
        }
    }
}

/// RFC 9211 `collapsed`: whether the coalescing layer beneath the cache
/// shared this response with other waiting requests.
pub(crate) fn is_collapsed(extensions: &Extensions) -> bool {
    #[cfg(feature = "coalesce")]
    {
        extensions.get::<crate::coalesce::Collapsed>().is_some()
    }
    #[cfg(not(feature = "coalesce"))]
    {
        let _ = extensions;
        false
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn tags(headers: &HeaderMap, name: &http::HeaderName) -> Box<[Bytes]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            v.as_bytes()
                .split(|b| b.is_ascii_whitespace() || *b == b',')
        })
        .filter(|t| !t.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Invalidation after an unsafe request (RFC 9111 §4.4): the target URI,
/// and `Location` / `Content-Location` when they name the same origin.
pub(crate) struct Invalidate {
    /// The request's own key (a custom key function's, if any).
    target: Key,
    /// The key of the bare target URI.
    target_uri: Key,
    scheme: String,
    authority: String,
    path: String,
    options: crate::key::KeyOptions,
}

impl Invalidate {
    pub(crate) fn new<B>(settings: &Settings, req: &Request<B>) -> Option<Self> {
        let head = RequestHead::from_request(req);
        let target = settings.key_options.key(&head, None)?;
        let authority = match req.uri().authority() {
            Some(a) => a.as_str().to_owned(),
            None => req
                .headers()
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .to_owned(),
        };
        Some(Self {
            target,
            target_uri: settings.key_options.target_key(req.uri(), req.headers()),
            scheme: req.uri().scheme_str().unwrap_or("http").to_owned(),
            authority,
            path: req.uri().path().to_owned(),
            options: settings.key_options.clone(),
        })
    }

    fn run(&self, shared: &Shared, headers: &HeaderMap) {
        shared.store.remove(&self.target);
        self.remove_uri(shared, &self.target_uri);
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(uri) = headers
                .get(name)
                .and_then(|v| self.resolve(v.to_str().ok()?))
            {
                self.remove_uri(shared, &self.options.target_key(&uri, &HeaderMap::new()));
            }
        }
    }

    /// Removes the entries of a URI: with key headers configured, one per
    /// combination of their values (`uri\nname:value...`).
    fn remove_uri(&self, shared: &Shared, key: &Key) {
        shared.store.remove(key);
        if !self.options.headers().is_empty() {
            let mut prefix = key.as_bytes().to_vec();
            prefix.push(b'\n');
            shared.store.purge(store::Purge::Prefix(prefix.into()));
        }
    }

    /// `reference` as an absolute URI, when it is on the request's origin.
    fn resolve(&self, reference: &str) -> Option<Uri> {
        let absolute = if reference.contains("://") {
            let uri: Uri = reference.parse().ok()?;
            let same = uri.scheme_str()?.eq_ignore_ascii_case(&self.scheme)
                && uri
                    .authority()?
                    .as_str()
                    .eq_ignore_ascii_case(&self.authority);
            return same.then_some(uri);
        } else if reference.starts_with("//") {
            return None;
        } else if reference.starts_with('/') {
            format!("{}://{}{}", self.scheme, self.authority, reference)
        } else {
            let dir = &self.path[..self.path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            format!("{}://{}{}{}", self.scheme, self.authority, dir, reference)
        };
        absolute.parse().ok()
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("fwd", &self.fwd)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_headers_read_as_the_request_had_them() {
        // Up to `FEW` lines kept inline, more in a map: both read the same.
        for extra in [0, KeptHeaders::FEW] {
            let mut headers = HeaderMap::new();
            headers.append("accept", HeaderValue::from_static("text/html"));
            headers.append("authorization", HeaderValue::from_static("Bearer x"));
            headers.append("accept", HeaderValue::from_static("*/*"));
            for i in 0..extra {
                headers.append(format!("x-{i}").parse::<HeaderName>().unwrap(), i.into());
            }
            let mut kept = KeptHeaders::Few(Default::default());
            kept.keep(&headers);
            assert_eq!(matches!(kept, KeptHeaders::Map(_)), extra > 0);
            let accept = HeaderName::from_static("accept");
            let lines: Vec<_> = kept.get_all(&accept).collect();
            assert_eq!(lines, ["text/html", "*/*"]);
            assert!(kept.get_all(&AUTHORIZATION).next().is_some());
            assert!(kept.get_all(&http::header::COOKIE).next().is_none());
            assert_eq!(*kept.to_map(), headers);
        }
    }
}
