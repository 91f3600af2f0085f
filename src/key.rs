//! Request keys, shared by the response cache and the coalescing layer.
//!
//! A key names "the same request" for both layers: the scheme and authority,
//! the path and the query (optionally normalised), optionally the method and a
//! list of request headers whose values make responses differ. A custom key
//! function replaces all of that when an application knows better.
//!
//! ```
//! use http::{Method, Request};
//! use tower_perf::key::{KeyOptions, RequestHead};
//!
//! let options = KeyOptions::new().sort_query(true).ignore_query_param("utm_source");
//! let req = Request::get("http://example.com/items?b=2&utm_source=x&a=1")
//!     .body(())
//!     .unwrap();
//! let key = options.key(&RequestHead::from_request(&req), None).unwrap();
//! assert_eq!(key.as_bytes(), b"http://example.com/items?a=1&b=2");
//! ```

use std::{
    fmt,
    hash::{BuildHasher, Hash, Hasher},
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use http::{header::HOST, Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

/// A borrowed view of a request's head, given to custom key functions.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (axum's `MatchedPath`, connection info, ...).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `req`.
    pub fn from_request<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// A request key: cheap to clone, hashable, compared byte for byte.
///
/// The key is hashed once, when it is made, with foldhash under a random
/// per-process seed (URLs cannot be chosen in advance to collide); hashing
/// a key then writes that one number. A cache hashes a key on every
/// lookup, insert and table resize, and hashing long URLs anew each time
/// was a large part of the cost of storing a response.
#[derive(Clone)]
pub struct Key {
    bytes: Bytes,
    hash: u64,
}

impl Key {
    fn new(bytes: Bytes) -> Self {
        let hash = hash_of(&bytes);
        Self { bytes, hash }
    }

    /// This key, borrowed.
    #[cfg(feature = "cache")]
    pub(crate) fn view(&self) -> KeyRef<'_> {
        KeyRef {
            bytes: &self.bytes,
            hash: self.hash,
        }
    }

    /// A key from its raw bytes (what a custom key function or a purge call names).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self::new(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the key starts with `prefix`.
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.bytes.starts_with(prefix)
    }

    /// The number of bytes in the key.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The hash of a key's bytes: foldhash under a per-process random seed, so
/// that request URLs cannot be chosen in advance to collide. That is the
/// seeded, minimally DoS-resistant hashing `hashbrown` uses by default; the
/// hashes never reach a client. SipHash cost about 200 instructions more
/// per key.
fn hash_of(bytes: &[u8]) -> u64 {
    static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(bytes)
}

/// A key borrowed from a buffer (often on the stack): a lookup that finds
/// nothing or a stored entry needs no owned [`Key`]. It hashes and compares
/// like the `Key` it stands for.
#[cfg(feature = "cache")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRef<'a> {
    bytes: &'a [u8],
    hash: u64,
}

#[cfg(feature = "cache")]
impl<'a> KeyRef<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            hash: hash_of(bytes),
        }
    }

    /// Whether `key` is the key this one stands for.
    pub(crate) fn is(&self, key: &Key) -> bool {
        self.hash == key.hash && self.bytes == &key.bytes[..]
    }

    /// An owned copy.
    pub(crate) fn to_key(self) -> Key {
        Key {
            bytes: Bytes::copy_from_slice(self.bytes),
            hash: self.hash,
        }
    }
}

#[cfg(feature = "cache")]
impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(&self.bytes))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self::new(Bytes::from(s))
    }
}

/// Hands a precomputed hash to a map: a [`Key`]'s own, or one computed
/// outside a lock. Only `write_u64` is expected; anything else still mixes in.
#[cfg(any(feature = "cache", feature = "coalesce"))]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Prehashed(u64);

#[cfg(any(feature = "cache", feature = "coalesce"))]
impl Hasher for Prehashed {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyFn = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;

/// How a request becomes a [`Key`].
///
/// The default key is `scheme://authority/path?query`: the scheme is taken from
/// the URI (`http` when the server did not set one), the authority from the URI
/// or the `Host` header.
#[derive(Clone, Default)]
pub struct KeyOptions {
    sort_query: bool,
    ignore_query: bool,
    ignored_params: Arc<[Box<str>]>,
    headers: Arc<[HeaderName]>,
    key_fn: Option<Arc<KeyFn>>,
}

impl fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyOptions")
            .field("sort_query", &self.sort_query)
            .field("ignore_query", &self.ignore_query)
            .field("ignored_params", &self.ignored_params)
            .field("headers", &self.headers)
            .field("key_fn", &self.key_fn.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl KeyOptions {
    /// Keys from scheme, authority, path and query, as received.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorts query parameters, so `?b=2&a=1` and `?a=1&b=2` share a key.
    pub fn sort_query(mut self, sort: bool) -> Self {
        self.sort_query = sort;
        self
    }

    /// Leaves the whole query out of the key.
    pub fn ignore_query(mut self, ignore: bool) -> Self {
        self.ignore_query = ignore;
        self
    }

    /// Leaves one query parameter (by name, e.g. `utm_source`) out of the key.
    pub fn ignore_query_param(mut self, name: impl Into<String>) -> Self {
        let mut params: Vec<Box<str>> = self.ignored_params.iter().cloned().collect();
        params.push(name.into().into_boxed_str());
        self.ignored_params = params.into();
        self
    }

    /// Adds a request header whose value becomes part of the key.
    pub fn header(mut self, name: HeaderName) -> Self {
        let mut headers: Vec<HeaderName> = self.headers.iter().cloned().collect();
        if !headers.contains(&name) {
            headers.push(name);
        }
        self.headers = headers.into();
        self
    }

    /// The request headers that are part of the key.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Whether a key is exactly its (optional) method and its target: no
    /// request-header lines and no key function, so the keys of a target's
    /// reads can be built rather than searched for.
    #[cfg(feature = "coalesce")]
    pub(crate) fn keys_are_targets(&self) -> bool {
        self.headers.is_empty() && self.key_fn.is_none()
    }

    /// Replaces the key with the result of `f`; `None` means "do not key this
    /// request" (the layer passes it through untouched).
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// The key of a request, prefixed with `method` when one is given.
    /// `None` when a custom key function declines the request.
    pub fn key(&self, head: &RequestHead<'_>, method: Option<&Method>) -> Option<Key> {
        let mut out = Vec::with_capacity(64 + head.uri.path().len());
        self.write_key(head, method, &mut out)?;
        Some(Key::new(out.into()))
    }

    /// Writes the bytes of [`key`](Self::key) to `out` without building a
    /// [`Key`] (the coalescing layer keys requests in a stack buffer and
    /// allocates only the keys it keeps). `None` when a custom key function
    /// declines the request; `out` is then left partly written.
    pub(crate) fn write_key(
        &self,
        head: &RequestHead<'_>,
        method: Option<&Method>,
        out: &mut impl KeySink,
    ) -> Option<()> {
        self.write_key_with_host(head, method, || head.headers.get(HOST), out)
    }

    /// [`write_key`](Self::write_key) with the request's `Host` header at
    /// hand (a layer that already went through the headers saves a lookup).
    pub(crate) fn write_key_with_host<'h>(
        &self,
        head: &RequestHead<'h>,
        method: Option<&Method>,
        host: impl FnOnce() -> Option<&'h HeaderValue>,
        out: &mut impl KeySink,
    ) -> Option<()> {
        if let Some(method) = method {
            out.put(method.as_str().as_bytes());
            out.put(b" ");
        }
        if let Some(f) = &self.key_fn {
            out.put(f(head)?.as_bytes());
            return Some(());
        }
        self.write_target(head.uri, host, out);
        for name in self.headers.iter() {
            out.put(b"\n");
            out.put(name.as_str().as_bytes());
            out.put(b":");
            for (i, value) in head.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                out.put(value.as_bytes());
            }
        }
        Some(())
    }

    /// The key of a unary gRPC call: the request's key (see [`key`](Self::key),
    /// without method), its `grpc-encoding` and `grpc-accept-encoding`, then
    /// the framed request `message`, so that calls with different messages
    /// never share a key. `None` when a custom key function declines.
    #[cfg(any(feature = "cache", feature = "coalesce"))]
    pub(crate) fn grpc_key(&self, head: &RequestHead<'_>, message: &[u8]) -> Option<Key> {
        let key = self.key(head, None)?;
        let mut out = Vec::with_capacity(key.len() + message.len() + 48);
        out.extend_from_slice(key.as_bytes());
        for name in ["grpc-encoding", "grpc-accept-encoding"] {
            out.push(b'\n');
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            for (i, value) in head.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(value.as_bytes());
            }
        }
        // A NUL never appears in a header line: the message cannot be
        // mistaken for one.
        out.extend_from_slice(b"\n\0");
        out.extend_from_slice(message);
        Some(Key::new(out.into()))
    }

    /// The key of an absolute or origin-form target seen from a request with
    /// `headers` (used for invalidation of `Location` / `Content-Location`).
    pub fn target_key(&self, uri: &Uri, headers: &HeaderMap) -> Key {
        let mut out = Vec::with_capacity(64 + uri.path().len());
        self.write_target(uri, || headers.get(HOST), &mut out);
        Key::new(out.into())
    }

    fn write_target<'h>(
        &self,
        uri: &Uri,
        host: impl FnOnce() -> Option<&'h HeaderValue>,
        out: &mut impl KeySink,
    ) {
        out.put(uri.scheme_str().unwrap_or("http").as_bytes());
        out.put(b"://");
        match uri.authority() {
            Some(authority) => out.put(authority.as_str().as_bytes()),
            None => {
                if let Some(host) = host() {
                    out.put(host.as_bytes());
                }
            }
        }
        out.put(uri.path().as_bytes());
        if self.ignore_query {
            return;
        }
        let Some(query) = uri.query() else { return };
        if !self.sort_query && self.ignored_params.is_empty() {
            if !query.is_empty() {
                out.put(b"?");
                out.put(query.as_bytes());
            }
            return;
        }
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or(p);
                !self.ignored_params.iter().any(|ignored| **ignored == *name)
            })
            .collect();
        if self.sort_query {
            params.sort_unstable();
        }
        for (i, param) in params.iter().enumerate() {
            out.put(if i == 0 { b"?" } else { b"&" });
            out.put(param.as_bytes());
        }
    }
}

/// Where the bytes of a key go: a `Vec` for an owned [`Key`], or a caller's
/// buffer that keeps only what it needs.
pub(crate) trait KeySink {
    /// Appends `bytes` to the key.
    fn put(&mut self, bytes: &[u8]);
}

impl KeySink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A request key being built: on the stack while it fits (most keys), so
/// that only a key kept past the call (a coalescing leader's, a forwarded
/// request's) is copied to the heap.
#[cfg(any(feature = "cache", feature = "coalesce"))]
pub(crate) struct KeyBuf {
    inline: [u8; KeyBuf::INLINE],
    /// The key's length; beyond `INLINE` the key is in `spilled`.
    len: usize,
    spilled: Vec<u8>,
}

#[cfg(any(feature = "cache", feature = "coalesce"))]
impl KeyBuf {
    const INLINE: usize = 256;

    pub(crate) fn new() -> Self {
        Self {
            inline: [0; Self::INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self.inline.get(..self.len) {
            Some(key) => key,
            None => &self.spilled,
        }
    }
}

#[cfg(any(feature = "cache", feature = "coalesce"))]
impl KeySink for KeyBuf {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.inline.get_mut(self.len..end) {
            Some(slot) => slot.copy_from_slice(bytes),
            None => {
                if self.len <= Self::INLINE {
                    self.spilled.extend_from_slice(&self.inline[..self.len]);
                }
                self.spilled.extend_from_slice(bytes);
            }
        }
        self.len = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(options: &KeyOptions, uri: &str, method: Option<&Method>) -> Option<Key> {
        let req = Request::get(uri)
            .header("host", "example.org")
            .header("accept-language", "fr")
            .body(())
            .unwrap();
        options.key(&RequestHead::from_request(&req), method)
    }

    #[test]
    fn default_key_is_scheme_authority_path_query() {
        let o = KeyOptions::new();
        assert_eq!(
            key(&o, "https://example.com/a?x=1", None)
                .unwrap()
                .as_bytes(),
            b"https://example.com/a?x=1"
        );
        // Origin-form: authority from Host, scheme defaults to http.
        assert_eq!(
            key(&o, "/a?x=1", None).unwrap().as_bytes(),
            b"http://example.org/a?x=1"
        );
        assert_eq!(
            key(&o, "/a?", None).unwrap().as_bytes(),
            b"http://example.org/a"
        );
    }

    #[test]
    fn method_prefix_and_headers() {
        let o = KeyOptions::new().header(HeaderName::from_static("accept-language"));
        assert_eq!(
            key(&o, "/a", Some(&Method::HEAD)).unwrap().as_bytes(),
            b"HEAD http://example.org/a\naccept-language:fr"
        );
    }

    #[test]
    fn query_normalisation() {
        let o = KeyOptions::new().sort_query(true).ignore_query_param("utm");
        assert_eq!(
            key(&o, "/a?z=1&utm=3&&a=2", None).unwrap().as_bytes(),
            b"http://example.org/a?a=2&z=1"
        );
        let o = KeyOptions::new().ignore_query(true);
        assert_eq!(
            key(&o, "/a?z=1", None).unwrap().as_bytes(),
            b"http://example.org/a"
        );
        let o = KeyOptions::new().ignore_query_param("utm");
        assert_eq!(
            key(&o, "/a?utm", None).unwrap().as_bytes(),
            b"http://example.org/a"
        );
    }

    #[test]
    fn custom_key_fn_can_decline() {
        let o = KeyOptions::new()
            .key_fn(|head| (head.uri.path() != "/private").then(|| head.uri.path().to_owned()));
        assert_eq!(
            key(&o, "/x?y", Some(&Method::GET)).unwrap().as_bytes(),
            b"GET /x"
        );
        assert!(key(&o, "/private", None).is_none());
    }

    #[cfg(any(feature = "cache", feature = "coalesce"))]
    #[test]
    fn grpc_keys_differ_by_message_and_encoding() {
        let o = KeyOptions::new().header(HeaderName::from_static("x-tenant"));
        let req = |encoding: Option<&str>| {
            let mut b = Request::post("http://example.org/pkg.Svc/Get").header("x-tenant", "a");
            if let Some(e) = encoding {
                b = b.header("grpc-accept-encoding", e);
            }
            b.body(()).unwrap()
        };
        let plain = req(None);
        let head = RequestHead::from_request(&plain);
        let a = o.grpc_key(&head, b"\0\0\0\0\x01a").unwrap();
        assert!(a.starts_with(b"http://example.org/pkg.Svc/Get\nx-tenant:a\ngrpc-encoding:"));
        assert!(a.as_bytes().ends_with(b"\n\0\0\0\0\0\x01a"));
        assert_ne!(a, o.grpc_key(&head, b"\0\0\0\0\x01b").unwrap());
        let gzip = req(Some("gzip"));
        assert_ne!(
            a,
            o.grpc_key(&RequestHead::from_request(&gzip), b"\0\0\0\0\x01a")
                .unwrap()
        );
        let declined = KeyOptions::new().key_fn(|_| None);
        assert!(declined.grpc_key(&head, b"").is_none());
    }

    #[test]
    fn non_utf8_header_values_do_not_panic() {
        let o = KeyOptions::new().header(HeaderName::from_static("x-bin"));
        let mut req = Request::get("/a").body(()).unwrap();
        req.headers_mut()
            .insert("x-bin", HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap());
        let k = o.key(&RequestHead::from_request(&req), None).unwrap();
        assert!(k.as_bytes().ends_with(&[0xff, 0xfe]));
        assert!(!format!("{k:?}").is_empty());
    }

    #[cfg(any(feature = "cache", feature = "coalesce"))]
    #[test]
    fn keys_built_on_the_stack_match_owned_keys_at_every_length() {
        let options = KeyOptions::new().header(http::header::ACCEPT_LANGUAGE);
        // Across the inline capacity, byte by byte.
        for len in (0..2).chain(180..KeyBuf::INLINE + 10).chain([5000]) {
            let req = Request::get(format!("http://example.com/{}", "p".repeat(len)))
                .header(http::header::ACCEPT_LANGUAGE, "fr")
                .body(())
                .unwrap();
            let head = RequestHead::from_request(&req);
            let mut buf = KeyBuf::new();
            options
                .write_key(&head, Some(&Method::GET), &mut buf)
                .unwrap();
            let owned = options.key(&head, Some(&Method::GET)).unwrap();
            assert_eq!(buf.as_bytes(), owned.as_bytes(), "length {len}");
        }
    }
}
