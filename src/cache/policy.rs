//! RFC 9111 rules as pure functions over header maps and times: parsing of
//! `Cache-Control`, `Age`, dates and `Vary`, storability, freshness, the
//! choice between serving, serving stale and revalidating, and conditional
//! request evaluation. Nothing here panics on any input.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    header::{
        ACCEPT_CHARSET, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AGE, CACHE_CONTROL, CONNECTION,
        CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
        IF_NONE_MATCH, LAST_MODIFIED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE,
        TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
    },
    HeaderMap, HeaderName, HeaderValue, StatusCode,
};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2).
pub(crate) const DELTA_MAX: u64 = 2_147_483_648;

/// Heuristic freshness is 10% of the time since `Last-Modified`, at most a day.
const HEURISTIC_CAP: Duration = Duration::from_secs(24 * 60 * 60);

/// Calls `f(member)` for every member of the comma-separated lists in all
/// `field` lines, trimmed; commas inside quoted strings do not split.
pub(crate) fn for_each_member(headers: &HeaderMap, field: &HeaderName, mut f: impl FnMut(&[u8])) {
    for line in headers.get_all(field) {
        let bytes = line.as_bytes();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for i in 0..=bytes.len() {
            if let Some(&b) = bytes.get(i) {
                if escaped {
                    escaped = false;
                    continue;
                }
                if quoted {
                    match b {
                        b'\\' => escaped = true,
                        b'"' => quoted = false,
                        _ => {}
                    }
                    continue;
                }
                if b == b'"' {
                    quoted = true;
                }
                if b != b',' {
                    continue;
                }
            }
            let member = trim(&bytes[start..i]);
            start = i + 1;
            if !member.is_empty() {
                f(member);
            }
        }
    }
}

/// Calls `f(name, value)` for every `name[=value]` directive in every `field`
/// line; values keep their quotes.
pub(crate) fn for_each_directive(
    headers: &HeaderMap,
    field: &HeaderName,
    mut f: impl FnMut(&[u8], Option<&[u8]>),
) {
    for_each_member(headers, field, |item| {
        match item.iter().position(|&b| b == b'=') {
            Some(eq) => f(trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
            None => f(item, None),
        }
    });
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Parses delta-seconds (digits, optionally quoted), saturating at
/// [`DELTA_MAX`]. `None` when missing or invalid.
pub(crate) fn delta_seconds(value: Option<&[u8]>) -> Option<u64> {
    let mut v = value?;
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        v = &v[1..v.len() - 1];
    }
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| {
        (acc * 10 + u64::from(d - b'0')).min(DELTA_MAX)
    }))
}

/// The header addressed to surrogates (reverse-proxy caches), W3C Edge
/// Architecture: its `max-age` overrides `Cache-Control` freshness here, and
/// it never leaves the cache.
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Response `Cache-Control` directives a shared cache acts on, and the
/// `Surrogate-Control` `max-age`. The first occurrence of a valued directive
/// wins; an invalid `max-age` or `s-maxage` counts as 0 (stale), as RFC 9111
/// §4.2.1 allows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseCc {
    pub(crate) surrogate_max_age: Option<u64>,
    pub(crate) surrogate_no_store: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl ResponseCc {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for_each_directive(headers, &CACHE_CONTROL, |name, value| {
            let is = |d: &str| name.eq_ignore_ascii_case(d.as_bytes());
            let first = |slot: &mut Option<u64>, invalid: Option<u64>| {
                if slot.is_none() {
                    *slot = delta_seconds(value).or(invalid);
                }
            };
            if is("max-age") {
                first(&mut cc.max_age, Some(0));
            } else if is("s-maxage") {
                first(&mut cc.s_maxage, Some(0));
            } else if is("no-store") {
                cc.no_store = true;
            } else if is("no-cache") {
                // A qualified no-cache="field" is treated as unqualified: safer.
                cc.no_cache = true;
            } else if is("private") {
                cc.private = true;
            } else if is("public") {
                cc.public = true;
            } else if is("must-revalidate") {
                cc.must_revalidate = true;
            } else if is("proxy-revalidate") {
                cc.proxy_revalidate = true;
            } else if is("must-understand") {
                cc.must_understand = true;
            } else if is("stale-while-revalidate") {
                first(&mut cc.stale_while_revalidate, None);
            } else if is("stale-if-error") {
                first(&mut cc.stale_if_error, None);
            }
        });
        // Only untargeted directives: `max-age=60;edge-7` is for another device.
        for_each_directive(headers, &SURROGATE_CONTROL, |name, value| {
            cc.surrogate_no_store |= name.eq_ignore_ascii_case(b"no-store");
            if cc.surrogate_max_age.is_none()
                && name.eq_ignore_ascii_case(b"max-age")
                && value.is_some_and(|v| !v.contains(&b';'))
            {
                cc.surrogate_max_age = Some(delta_seconds(value).unwrap_or(0));
            }
        });
        cc
    }

    /// Whether the response states its freshness lifetime.
    fn explicit(&self) -> bool {
        self.surrogate_max_age.is_some() || self.s_maxage.is_some() || self.max_age.is_some()
    }

    /// Whether a stale copy may ever be served without revalidation
    /// (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub(crate) fn allows_stale(&self) -> bool {
        !(self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some())
    }
}

/// Request `Cache-Control` directives (RFC 9111 §5.2.1). Invalid values
/// are ignored, except `max-age`, which then counts as 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestCc {
    pub(crate) max_age: Option<u64>,
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) stale_if_error: Option<u64>,
}

impl RequestCc {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for_each_directive(headers, &CACHE_CONTROL, |name, value| {
            let is = |d: &str| name.eq_ignore_ascii_case(d.as_bytes());
            if is("max-age") {
                cc.max_age = cc.max_age.or(Some(delta_seconds(value).unwrap_or(0)));
            } else if is("max-stale") {
                // Without a value: any staleness is acceptable.
                let v = if value.is_none() {
                    Some(DELTA_MAX)
                } else {
                    delta_seconds(value)
                };
                cc.max_stale = cc.max_stale.or(v);
            } else if is("min-fresh") {
                cc.min_fresh = cc.min_fresh.or(delta_seconds(value));
            } else if is("no-cache") {
                cc.no_cache = true;
            } else if is("no-store") {
                cc.no_store = true;
            } else if is("only-if-cached") {
                cc.only_if_cached = true;
            } else if is("stale-if-error") {
                cc.stale_if_error = cc.stale_if_error.or(delta_seconds(value));
            }
        });
        cc
    }
}

/// The first `field` line as an HTTP date: `None` when absent, `Some(None)`
/// when present but invalid (which RFC 9111 §5.3 reads as "in the past").
pub(crate) fn http_date(headers: &HeaderMap, field: &HeaderName) -> Option<Option<SystemTime>> {
    let value = headers.get(field)?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok()),
    )
}

/// The `Age` header in seconds: 0 when absent. Anything but one field line
/// holding one delta-seconds (a list, a second line, a sign, a fraction, a
/// parameter) is invalid freshness information, which RFC 9111 §4.2.1
/// encourages treating as stale: it counts as [`DELTA_MAX`].
pub(crate) fn age_value(headers: &HeaderMap) -> u64 {
    let mut lines = headers.get_all(AGE).iter();
    match (lines.next(), lines.next()) {
        (None, _) => 0,
        (Some(line), None) => delta_seconds(Some(trim(line.as_bytes()))).unwrap_or(DELTA_MAX),
        (Some(_), Some(_)) => DELTA_MAX,
    }
}

/// Status codes a cache may give heuristic freshness (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final status codes defined by RFC 9110 (what `must-understand` asks about).
pub(crate) fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    Status,
    SetCookie,
    VaryStar,
    NoFreshness,
}

/// What storability needs to know about the request that was forwarded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreRequest {
    pub(crate) cc: RequestCc,
    pub(crate) authorization: bool,
    pub(crate) store_set_cookie: bool,
}

impl StoreRequest {
    /// `authorization`: whether the request carried `Authorization`.
    pub(crate) fn new(authorization: bool, cc: RequestCc, store_set_cookie: bool) -> Self {
        Self {
            cc,
            authorization,
            store_set_cookie,
        }
    }
}

/// RFC 9111 §3 for a shared cache, given a GET request: `Ok` when the
/// response may be stored and is worth storing: it is still fresh
/// (`fresh_for` gives what is left of its lifetime on arrival), or has a
/// validator to revalidate with, or a stale-* window to be served in.
/// `fresh_for` is asked last: responses refused earlier (`private`,
/// `no-store`, ...) never read the clock or parse dates.
pub(crate) fn storable(
    req: &StoreRequest,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseCc,
    fresh_for: impl FnOnce() -> Duration,
) -> Result<(), NotStorable> {
    if req.cc.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    // Only final responses; no range support (206), and a 304 only ever
    // updates a stored response.
    let status_ok = status.as_u16() >= 200
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    if !status_ok || (cc.must_understand && !understood(status)) {
        return Err(NotStorable::Status);
    }
    // must-understand overrides no-store when the status is understood.
    if (cc.no_store && !cc.must_understand) || cc.surrogate_no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if req.authorization && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStorable::Authorization);
    }
    if !req.store_set_cookie && headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if matches!(vary(headers), Vary::Star) {
        return Err(NotStorable::VaryStar);
    }
    let explicit = cc.explicit() || headers.contains_key(EXPIRES);
    let heuristic = cc.public || heuristically_cacheable(status);
    if !(explicit || heuristic) {
        return Err(NotStorable::NoFreshness);
    }
    let useful = headers.contains_key(ETAG)
        || headers.contains_key(LAST_MODIFIED)
        || cc.stale_while_revalidate.is_some()
        || cc.stale_if_error.is_some()
        || !fresh_for().is_zero();
    if !useful {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// Whether a response carries anything a cache could keep it by. Without
/// `Cache-Control`, `Surrogate-Control`, `Expires`, `ETag` or
/// `Last-Modified` it has no freshness lifetime (short of the operator's
/// default TTL) and no validator, so [`storable`] would refuse it: this
/// says so with one pass over the names instead of parsing them.
pub(crate) fn has_freshness_information(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        name == CACHE_CONTROL
            || name == EXPIRES
            || name == ETAG
            || name == LAST_MODIFIED
            || name == SURROGATE_CONTROL
    })
}

/// The freshness lifetime (RFC 9111 §4.2.1): `Surrogate-Control: max-age`,
/// then `s-maxage`, then `max-age`, then
/// `Expires - Date`; otherwise the operator's default TTL, otherwise the
/// heuristic of §4.2.2, both only for heuristically cacheable responses.
pub(crate) fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseCc,
    received: SystemTime,
    default_ttl: Option<Duration>,
) -> Duration {
    if let Some(s) = cc.surrogate_max_age.or(cc.s_maxage).or(cc.max_age) {
        return Duration::from_secs(s);
    }
    let date = http_date(headers, &DATE).flatten().unwrap_or(received);
    if let Some(expires) = http_date(headers, &EXPIRES) {
        return expires
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or_default();
    }
    if !(cc.public || heuristically_cacheable(status)) {
        return Duration::ZERO;
    }
    if let Some(ttl) = default_ttl {
        return ttl;
    }
    match http_date(headers, &LAST_MODIFIED).flatten() {
        Some(modified) => date
            .duration_since(modified)
            .map(|d| (d / 10).min(HEURISTIC_CAP))
            .unwrap_or_default(),
        None => Duration::ZERO,
    }
}

/// The age of a response when it was received (RFC 9111 §4.2.3):
/// `max(apparent_age, age_value + response_delay)`.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    received: SystemTime,
    response_delay: Duration,
) -> Duration {
    let apparent = http_date(headers, &DATE)
        .flatten()
        .and_then(|date| received.duration_since(date).ok())
        .unwrap_or_default();
    let corrected = Duration::from_secs(age_value(headers)).saturating_add(response_delay);
    apparent.max(corrected)
}

/// How a stored response may be used for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Fresh and acceptable: serve it.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`): serve it.
    Stale,
    /// Stale within `stale-while-revalidate`: serve it, refresh in the background.
    StaleWhileRevalidate,
    /// Validate (or fetch) upstream first.
    Revalidate,
}

/// Chooses how to use a stored response of `age` with `lifetime`.
pub(crate) fn decide(
    res: &ResponseCc,
    req: &RequestCc,
    age: Duration,
    lifetime: Duration,
    max_swr: Duration,
) -> Use {
    if res.no_cache || req.no_cache {
        return Use::Revalidate;
    }
    if let Some(max_age) = req.max_age {
        if max_age == 0 || age > Duration::from_secs(max_age) {
            return Use::Revalidate;
        }
    }
    if let Some(left) = lifetime.checked_sub(age).filter(|d| !d.is_zero()) {
        return match req.min_fresh {
            Some(min) if left < Duration::from_secs(min) => Use::Revalidate,
            _ => Use::Fresh,
        };
    }
    if !res.allows_stale() {
        return Use::Revalidate;
    }
    let staleness = age - lifetime.min(age);
    if req
        .max_stale
        .is_some_and(|s| staleness <= Duration::from_secs(s))
    {
        return Use::Stale;
    }
    match res.stale_while_revalidate {
        Some(s) if staleness < Duration::from_secs(s).min(max_swr) => Use::StaleWhileRevalidate,
        _ => Use::Revalidate,
    }
}

/// Whether a stale response may answer for an upstream error or 5xx
/// (RFC 5861 §4), given the request's and the response's `stale-if-error`.
pub(crate) fn stale_if_error(
    res: &ResponseCc,
    req: &RequestCc,
    staleness: Duration,
    max_sie: Duration,
) -> bool {
    let window = match (res.stale_if_error, req.stale_if_error) {
        (None, None) => return false,
        (a, b) => Duration::from_secs(a.max(b).unwrap_or(0)).min(max_sie),
    };
    res.allows_stale() && staleness <= window
}

/// Whether a request's `If-None-Match` / `If-Modified-Since` are satisfied by
/// a stored 200 with `stored` headers, so the answer is 304 (RFC 9111 §4.3.2,
/// RFC 9110 §13.2.2: `If-None-Match` wins, weak comparison).
pub(crate) fn not_modified(request: &HeaderMap, status: StatusCode, stored: &HeaderMap) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.get(ETAG).map(|e| weak(trim(e.as_bytes()))) else {
            return false;
        };
        let mut hit = false;
        for_each_member(request, &IF_NONE_MATCH, |tag| {
            hit |= tag == b"*" || weak(tag) == etag;
        });
        return hit;
    }
    let Some(Some(since)) = http_date(request, &IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = http_date(stored, &LAST_MODIFIED)
        .or_else(|| http_date(stored, &DATE))
        .flatten();
    modified.is_some_and(|m| m <= since)
}

fn weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A response's `Vary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    /// Listed request headers select the variant.
    Names(Vec<HeaderName>),
    /// `*` (or an unparseable name): never served from cache.
    Star,
}

pub(crate) fn vary(headers: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    let mut star = false;
    for_each_directive(headers, &VARY, |name, value| {
        match (value, HeaderName::from_bytes(name)) {
            (None, Ok(name)) if name != "*" => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            _ => star = true,
        }
    });
    if star {
        Vary::Star
    } else {
        Vary::Names(names)
    }
}

/// The normalised value of a selecting header: field lines combined, list
/// members trimmed and joined by `,`, and lowercased for the headers whose
/// values are case-insensitive (`Accept-Encoding`, `Accept-Language`,
/// `Accept-Charset`). `None` when the header is absent.
/// `lines` are the request's lines of `name`.
pub(crate) fn selecting_value<'a>(
    lines: impl IntoIterator<Item = &'a HeaderValue>,
    name: &HeaderName,
) -> Option<Bytes> {
    let mut lines = lines.into_iter().peekable();
    lines.peek()?;
    let mut out = BytesMut::new();
    for line in lines {
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = trim(member);
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.put_u8(b',');
            }
            out.extend_from_slice(member);
        }
    }
    if [ACCEPT_ENCODING, ACCEPT_LANGUAGE, ACCEPT_CHARSET].contains(name) {
        out.make_ascii_lowercase();
    }
    Some(out.freeze())
}

/// Hop-by-hop headers, never stored (RFC 9111 §3.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TRAILER,
];

fn hop_by_hop(name: &HeaderName, connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
        || name == "proxy-authentication-info"
        || connection.contains(name)
}

fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut listed = Vec::new();
    for_each_directive(headers, &CONNECTION, |name, _| {
        if let Ok(name) = HeaderName::from_bytes(name) {
            listed.push(name);
        }
    });
    listed
}

/// The headers to store from a response: without hop-by-hop and
/// `Connection`-listed fields, `Surrogate-Control` and `extra`. (`Age` is kept for the age
/// calculation and replaced on every hit.)
pub(crate) fn headers_to_store(headers: &HeaderMap, extra: Option<&HeaderName>) -> HeaderMap {
    let connection = connection_listed(headers);
    // Room for what storing adds (`Age`, `Cache-Status`, `Content-Length`)
    // without growing the map.
    let mut out = HeaderMap::with_capacity(headers.len() + 3);
    for (name, value) in headers {
        if !(hop_by_hop(name, &connection) || name == SURROGATE_CONTROL || Some(name) == extra) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Fields a 304 never updates (RFC 9111 §3.2): they describe the stored
/// body, which the 304 does not replace.
const NOT_UPDATED: [HeaderName; 4] = [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, ETAG];

/// Updates stored headers from a 304 (RFC 9111 §3.2, §4.3.4): every field
/// of the new response replaces the stored one, except those describing the
/// stored body (`Content-Length`, `Content-Encoding`, `Content-Range`,
/// `Content-MD5`, `ETag`). `Age` and `Date` describe the old response:
/// they never outlive it.
pub(crate) fn merge_headers(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    out.remove(AGE);
    out.remove(DATE);
    let update = headers_to_store(update, None);
    for name in update.keys() {
        if NOT_UPDATED.contains(name) || name == "content-md5" {
            continue;
        }
        out.remove(name);
        for value in update.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;
    use proptest::prelude::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_response_directives() {
        let cc = ResponseCc::parse(&h(&[
            (
                "cache-control",
                "Public, MAX-AGE=60, no-cache=\"set-cookie, x\"",
            ),
            (
                "cache-control",
                "s-maxage=\"30\", max-age=5, stale-while-revalidate=10",
            ),
        ]));
        assert!(cc.public && cc.no_cache && !cc.private);
        assert_eq!(cc.max_age, Some(60), "first occurrence wins");
        assert_eq!(cc.s_maxage, Some(30), "quoted value accepted");
        assert_eq!(cc.stale_while_revalidate, Some(10));
    }

    #[test]
    fn surrogate_control_max_age_wins_unless_targeted() {
        let now = SystemTime::now();
        let headers = h(&[
            ("cache-control", "max-age=1, s-maxage=2"),
            ("surrogate-control", "foo, MAX-AGE=3600"),
        ]);
        let cc = ResponseCc::parse(&headers);
        assert_eq!(cc.surrogate_max_age, Some(3600));
        let life = freshness_lifetime(StatusCode::OK, &headers, &cc, now, None);
        assert_eq!(life, secs(3600));
        let no_store = h(&[
            ("cache-control", "max-age=60"),
            ("surrogate-control", "no-store"),
        ]);
        assert_eq!(
            check(&HeaderMap::new(), 200, &no_store),
            Err(NotStorable::NoStore)
        );
        let targeted = h(&[("surrogate-control", "max-age=3600;other-cache")]);
        assert_eq!(ResponseCc::parse(&targeted).surrogate_max_age, None);
        let stored = headers_to_store(&headers, None);
        assert!(stored.get("surrogate-control").is_none());
    }

    #[test]
    fn invalid_max_age_is_stale_and_huge_saturates() {
        let cc = ResponseCc::parse(&h(&[("cache-control", "max-age=abc")]));
        assert_eq!(cc.max_age, Some(0));
        let cc = ResponseCc::parse(&h(&[("cache-control", "max-age=-1")]));
        assert_eq!(cc.max_age, Some(0));
        let cc = ResponseCc::parse(&h(&[("cache-control", "max-age=99999999999999999999999")]));
        assert_eq!(cc.max_age, Some(DELTA_MAX));
    }

    #[test]
    fn parses_request_directives() {
        let cc = RequestCc::parse(&h(&[(
            "cache-control",
            "max-stale, min-fresh=5, only-if-cached, no-store, max-age=x",
        )]));
        assert_eq!(cc.max_stale, Some(DELTA_MAX));
        assert_eq!(cc.min_fresh, Some(5));
        assert_eq!(cc.max_age, Some(0));
        assert!(cc.only_if_cached && cc.no_store && !cc.no_cache);
    }

    #[test]
    fn freshness_precedence() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + secs(100));
        let headers = h(&[
            ("cache-control", "max-age=10, s-maxage=20"),
            ("date", &date),
            ("expires", &later),
        ]);
        let cc = ResponseCc::parse(&headers);
        let ok = StatusCode::OK;
        assert_eq!(freshness_lifetime(ok, &headers, &cc, now, None), secs(20));
        let headers = h(&[
            ("cache-control", "max-age=10"),
            ("date", &date),
            ("expires", &later),
        ]);
        let cc = ResponseCc::parse(&headers);
        assert_eq!(freshness_lifetime(ok, &headers, &cc, now, None), secs(10));
        let headers = h(&[("date", &date), ("expires", &later)]);
        let cc = ResponseCc::parse(&headers);
        assert_eq!(freshness_lifetime(ok, &headers, &cc, now, None), secs(100));
        // Invalid Expires ("0") is in the past.
        let headers = h(&[("date", &date), ("expires", "0")]);
        assert_eq!(
            freshness_lifetime(ok, &headers, &cc, now, None),
            Duration::ZERO
        );
    }

    #[test]
    fn heuristic_only_for_heuristic_statuses_with_last_modified() {
        let now = SystemTime::UNIX_EPOCH + secs(1_000_000_000);
        let modified = httpdate::fmt_http_date(now - secs(1000));
        let date = httpdate::fmt_http_date(now);
        let headers = h(&[("date", &date), ("last-modified", &modified)]);
        let cc = ResponseCc::default();
        assert_eq!(
            freshness_lifetime(StatusCode::OK, &headers, &cc, now, None),
            secs(100)
        );
        assert_eq!(
            freshness_lifetime(StatusCode::FOUND, &headers, &cc, now, None),
            Duration::ZERO
        );
        let headers = h(&[("date", &date)]);
        assert_eq!(
            freshness_lifetime(StatusCode::OK, &headers, &cc, now, None),
            Duration::ZERO
        );
        assert_eq!(
            freshness_lifetime(StatusCode::OK, &headers, &cc, now, Some(secs(7))),
            secs(7),
            "the opt-in default TTL"
        );
        // Capped at a day.
        let old = httpdate::fmt_http_date(now - secs(100 * 24 * 3600));
        let headers = h(&[("date", &date), ("last-modified", &old)]);
        assert_eq!(
            freshness_lifetime(StatusCode::OK, &headers, &cc, now, None),
            HEURISTIC_CAP
        );
    }

    #[test]
    fn initial_age_accounts_for_date_age_and_delay() {
        let now = SystemTime::UNIX_EPOCH + secs(1_000_000_000);
        let date = httpdate::fmt_http_date(now - secs(30));
        assert_eq!(initial_age(&h(&[("date", &date)]), now, secs(1)), secs(30));
        assert_eq!(
            initial_age(&h(&[("date", &date), ("age", "50")]), now, secs(1)),
            secs(51)
        );
        assert_eq!(initial_age(&h(&[("date", &date)]), now, secs(1)), secs(30));
        for bad in ["bogus", "-1", "1.0", "1, 2", "0, 0", "1;a=b", ""] {
            let age = initial_age(&h(&[("age", bad)]), now, secs(2));
            assert_eq!(age, secs(DELTA_MAX + 2), "{bad:?} is invalid: stale");
        }
        let two_lines = h(&[("age", "0"), ("age", "0")]);
        assert_eq!(
            initial_age(&two_lines, now, Duration::ZERO),
            secs(DELTA_MAX)
        );
    }

    fn store_req(headers: &HeaderMap) -> StoreRequest {
        StoreRequest::new(
            headers.contains_key(AUTHORIZATION),
            RequestCc::parse(headers),
            false,
        )
    }

    fn check(req: &HeaderMap, status: u16, res: &HeaderMap) -> Result<(), NotStorable> {
        let status = StatusCode::from_u16(status).unwrap();
        let cc = ResponseCc::parse(res);
        let life = freshness_lifetime(status, res, &cc, SystemTime::now(), None);
        storable(&store_req(req), status, res, &cc, || life)
    }

    /// The shortcut agrees with the full rules: a response without
    /// freshness information is never storable, one with it may be.
    #[test]
    fn no_freshness_information_is_never_storable() {
        let fields = [
            ("cache-control", "max-age=60"),
            ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ("etag", "\"v1\""),
            ("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT"),
            ("surrogate-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("vary", "accept"),
            ("x-other", "1"),
        ];
        let none = HeaderMap::new();
        for mask in 0..1u32 << fields.len() {
            let res = h(&fields
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, f)| *f)
                .collect::<Vec<_>>());
            for status in [200, 404, 500] {
                let stored = check(&none, status, &res).is_ok();
                assert!(
                    has_freshness_information(&res) || !stored,
                    "{res:?} {status}"
                );
            }
            // Any one of the first five makes a 200 storable.
            assert_eq!(has_freshness_information(&res), mask & 0b11111 != 0);
            assert_eq!(
                check(&none, 200, &res).is_ok(),
                mask & 0b11111 != 0,
                "{res:?}"
            );
        }
    }

    #[test]
    fn storability_rules() {
        let none = HeaderMap::new();
        let fresh = h(&[("cache-control", "max-age=60")]);
        assert_eq!(check(&none, 200, &fresh), Ok(()));
        assert_eq!(check(&none, 599, &fresh), Ok(()), "explicit freshness");
        let understand = h(&[("cache-control", "max-age=60, must-understand")]);
        assert_eq!(check(&none, 599, &understand), Err(NotStorable::Status));
        assert_eq!(check(&none, 200, &understand), Ok(()));
        assert_eq!(check(&none, 206, &fresh), Err(NotStorable::Status));
        let cc = |v: &str| h(&[("cache-control", v)]);
        assert_eq!(
            check(&none, 200, &cc("no-store, max-age=6")),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            check(&none, 200, &cc("no-store, must-understand, max-age=6")),
            Ok(())
        );
        assert_eq!(
            check(&none, 200, &cc("private, max-age=6")),
            Err(NotStorable::Private)
        );
        let auth = h(&[("authorization", "Bearer x")]);
        assert_eq!(check(&auth, 200, &fresh), Err(NotStorable::Authorization));
        assert_eq!(check(&auth, 200, &cc("public, max-age=6")), Ok(()));
        assert_eq!(check(&auth, 200, &cc("s-maxage=6")), Ok(()));
        assert_eq!(check(&auth, 200, &cc("must-revalidate, max-age=6")), Ok(()));
        let no_store = h(&[("cache-control", "no-store")]);
        assert_eq!(
            check(&no_store, 200, &fresh),
            Err(NotStorable::RequestNoStore)
        );
        let cookie = h(&[("cache-control", "max-age=6"), ("set-cookie", "a=b")]);
        assert_eq!(check(&none, 200, &cookie), Err(NotStorable::SetCookie));
        let star = h(&[("cache-control", "max-age=6"), ("vary", "accept, *")]);
        assert_eq!(check(&none, 200, &star), Err(NotStorable::VaryStar));
        // No freshness and no validator: nothing to gain.
        assert_eq!(check(&none, 200, &none), Err(NotStorable::NoFreshness));
        assert_eq!(check(&none, 200, &h(&[("etag", "\"a\"")])), Ok(()));
        // 302 is not heuristically cacheable.
        assert_eq!(
            check(&none, 302, &h(&[("etag", "\"a\"")])),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn decisions() {
        let res = ResponseCc::default();
        let req = RequestCc::default();
        let day = secs(86400);
        assert_eq!(decide(&res, &req, secs(5), secs(10), day), Use::Fresh);
        assert_eq!(decide(&res, &req, secs(10), secs(10), day), Use::Revalidate);
        let no_cache = ResponseCc {
            no_cache: true,
            ..res
        };
        assert_eq!(
            decide(&no_cache, &req, secs(0), secs(10), day),
            Use::Revalidate
        );
        let max_age0 = RequestCc {
            max_age: Some(0),
            ..req
        };
        assert_eq!(
            decide(&res, &max_age0, secs(0), secs(10), day),
            Use::Revalidate
        );
        let min_fresh = RequestCc {
            min_fresh: Some(6),
            ..req
        };
        assert_eq!(
            decide(&res, &min_fresh, secs(5), secs(10), day),
            Use::Revalidate
        );
        let max_stale = RequestCc {
            max_stale: Some(5),
            ..req
        };
        assert_eq!(
            decide(&res, &max_stale, secs(14), secs(10), day),
            Use::Stale
        );
        assert_eq!(
            decide(&res, &max_stale, secs(16), secs(10), day),
            Use::Revalidate
        );
        let swr = ResponseCc {
            stale_while_revalidate: Some(30),
            ..res
        };
        assert_eq!(
            decide(&swr, &req, secs(20), secs(10), day),
            Use::StaleWhileRevalidate
        );
        assert_eq!(
            decide(&swr, &req, secs(20), secs(10), secs(5)),
            Use::Revalidate,
            "capped"
        );
        assert_eq!(decide(&swr, &req, secs(41), secs(10), day), Use::Revalidate);
        for strict in [
            ResponseCc {
                must_revalidate: true,
                ..swr
            },
            ResponseCc {
                proxy_revalidate: true,
                ..swr
            },
            ResponseCc {
                s_maxage: Some(10),
                ..swr
            },
        ] {
            assert_eq!(
                decide(&strict, &max_stale, secs(12), secs(10), day),
                Use::Revalidate
            );
        }
    }

    #[test]
    fn stale_if_error_window() {
        let res = ResponseCc {
            stale_if_error: Some(60),
            ..Default::default()
        };
        let req = RequestCc::default();
        let day = secs(86400);
        assert!(stale_if_error(&res, &req, secs(30), day));
        assert!(!stale_if_error(&res, &req, secs(61), day));
        assert!(!stale_if_error(&res, &req, secs(30), secs(10)));
        assert!(!stale_if_error(&ResponseCc::default(), &req, secs(1), day));
        let req = RequestCc {
            stale_if_error: Some(5),
            ..req
        };
        assert!(stale_if_error(&ResponseCc::default(), &req, secs(1), day));
        let strict = ResponseCc {
            must_revalidate: true,
            ..res
        };
        assert!(!stale_if_error(&strict, &req, secs(1), day));
    }

    #[test]
    fn conditionals() {
        let stored = h(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let ok = StatusCode::OK;
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", \"v1\"")]),
            ok,
            &stored
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), ok, &stored));
        assert!(!not_modified(
            &h(&[("if-none-match", "\"v2\"")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-none-match", "\"v1\"")]),
            StatusCode::NOT_FOUND,
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        let both = h(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, ok, &stored));
        assert!(not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "yesterday")]),
            ok,
            &stored
        ));
        assert!(!not_modified(&HeaderMap::new(), ok, &stored));
    }

    #[test]
    fn vary_and_selecting_values() {
        assert_eq!(
            vary(&h(&[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "accept-encoding")
            ])),
            Vary::Names(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ])
        );
        assert_eq!(vary(&h(&[("vary", "*")])), Vary::Star);
        assert_eq!(vary(&h(&[("vary", "bad name")])), Vary::Star);
        assert_eq!(vary(&HeaderMap::new()), Vary::Names(vec![]));
        let name = HeaderName::from_static("accept");
        let a = h(&[
            ("accept", "text/html ,  application/json"),
            ("accept", "*/*"),
        ]);
        let b = h(&[("accept", "text/html,application/json,*/*")]);
        assert_eq!(
            selecting_value(a.get_all(&name), &name),
            selecting_value(b.get_all(&name), &name)
        );
        assert_eq!(
            selecting_value(HeaderMap::new().get_all(&name), &name),
            None
        );
        let lang = HeaderName::from_static("accept-language");
        assert_eq!(
            selecting_value(h(&[("accept-language", "eN, De")]).get_all(&lang), &lang),
            selecting_value(h(&[("accept-language", "en,de")]).get_all(&lang), &lang)
        );
        let case_sensitive = h(&[("accept", "Text/HTML")]);
        assert_eq!(
            selecting_value(case_sensitive.get_all(&name), &name).unwrap(),
            "Text/HTML"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_not_stored() {
        let headers = h(&[
            ("connection", "x-private, close"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("surrogate-key", "a b"),
            ("content-type", "text/plain"),
        ]);
        let tag = HeaderName::from_static("surrogate-key");
        let stored = headers_to_store(&headers, Some(&tag));
        assert_eq!(stored.len(), 1);
        assert_eq!(stored["content-type"], "text/plain");
    }

    #[test]
    fn merge_replaces_all_but_content_length() {
        let stored = h(&[
            ("content-length", "5"),
            ("etag", "\"a\""),
            ("x-a", "1"),
            ("x-a", "2"),
            ("age", "7"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let update = h(&[
            ("content-length", "0"),
            ("x-a", "3"),
            ("cache-control", "max-age=9"),
        ]);
        let merged = merge_headers(&stored, &update);
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged.get_all("x-a").iter().count(), 1);
        assert_eq!(merged["x-a"], "3");
        assert_eq!(merged["cache-control"], "max-age=9");
        assert_eq!(merged["etag"], "\"a\"");
        assert!(merged.get("age").is_none() && merged.get("date").is_none());
        assert!(merged.get("content-encoding").is_none());
    }

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Any bytes a HeaderValue accepts: visible ASCII, spaces, tabs, obs-text.
        proptest::collection::vec(
            prop_oneof![
                Just(b','),
                Just(b'='),
                Just(b'"'),
                Just(b'\\'),
                Just(b' '),
                0x21u8..0x7f,
                0x80u8..=0xff
            ],
            0..64,
        )
    }

    fn map_of(field: &'static str, lines: Vec<Vec<u8>>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            if let Ok(v) = HeaderValue::from_bytes(&line) {
                map.append(field, v);
            }
        }
        map
    }

    proptest! {
        #[test]
        fn parsers_never_panic(lines in proptest::collection::vec(header_bytes(), 0..4)) {
            let now = SystemTime::now();
            for field in ["cache-control", "age", "expires", "date", "vary", "last-modified",
                          "if-none-match", "if-modified-since", "etag", "connection"] {
                let map = map_of(field, lines.clone());
                let res = ResponseCc::parse(&map);
                let req = RequestCc::parse(&map);
                let life = freshness_lifetime(StatusCode::OK, &map, &res, now, None);
                let _ = initial_age(&map, now, Duration::from_secs(1));
                let _ = storable(&StoreRequest::new(map.contains_key(AUTHORIZATION), req, false), StatusCode::OK, &map, &res, || life);
                let _ = decide(&res, &req, Duration::from_secs(DELTA_MAX), life, Duration::MAX);
                let _ = stale_if_error(&res, &req, Duration::MAX, Duration::MAX);
                let _ = not_modified(&map, StatusCode::OK, &map);
                let _ = vary(&map);
                let vary = HeaderName::from_static("vary");
                let _ = selecting_value(map.get_all(&vary), &vary);
                let _ = headers_to_store(&map, None);
                let _ = merge_headers(&map, &map);
                prop_assert!(res.max_age.map_or(true, |v| v <= DELTA_MAX));
                prop_assert!(age_value(&map) <= DELTA_MAX);
            }
        }

        #[test]
        fn delta_seconds_round_trips(n in 0u64..DELTA_MAX) {
            prop_assert_eq!(delta_seconds(Some(n.to_string().as_bytes())), Some(n));
        }

        #[test]
        fn first_max_age_wins(a in 0u64..100_000, b in 0u64..100_000) {
            let map = map_of("cache-control", vec![
                format!("max-age={a}").into_bytes(),
                format!("max-age={b}").into_bytes(),
            ]);
            prop_assert_eq!(ResponseCc::parse(&map).max_age, Some(a));
        }
    }
}
