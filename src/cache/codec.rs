//! The shared tier's wire formats: stored entries and purge messages.
//!
//! Hand-written, versioned and compact: big-endian integers and
//! length-prefixed byte strings, no text encoding of bodies. Decoding checks
//! every length against what is left and every header against `http`'s
//! rules, so a foreign, truncated, corrupt or older-version value is an
//! error (a miss for the caller), never a panic or a large allocation.
//!
//! Entry, version 1:
//!
//! ```text
//! "tpc" 0x01 | u8 variants | variant*
//! variant: u16 status | u64 stored-at (Unix ms) | u64 initial age (ms)
//!          | u64 freshness lifetime (ms) | cache-control | headers
//!          | u16 n (name, u8 present, value?)* (Vary selection)
//!          | u16 n tag* | u32 len body | u8 has-trailers (headers)?
//! cache-control: u16 flags | u8 present | u64 value per present bit
//! headers: u16 n (u16 len name, u32 len value)*
//! ```
//!
//! Validators (`ETag`, `Last-Modified`) travel in the headers.

use std::{
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::{
    policy::ResponseCc,
    store::{Entry, Purge, Variant, MAX_VARIANTS},
};
use crate::{body::Collected, key::Key};

const ENTRY_MAGIC: &[u8; 3] = b"tpc";
const PURGE_MAGIC: &[u8; 3] = b"tpp";
/// Bumped whenever a format changes: other versions read as misses.
pub(crate) const VERSION: u8 = 1;

/// Why a stored value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not one of ours, or another version of the format.
    Version,
    /// Truncated, overlong or with invalid fields.
    Corrupt,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Encodes the variants of one entry, their ages taken at `now` / `wall`.
pub(crate) fn encode_entry(variants: &[Arc<Variant>], now: Instant, wall: SystemTime) -> Vec<u8> {
    let size: usize = variants.iter().map(|v| v.body.data.len() + 256).sum();
    let mut buf = Vec::with_capacity(size);
    buf.put_slice(ENTRY_MAGIC);
    buf.put_u8(VERSION);
    let variants = &variants[..variants.len().min(MAX_VARIANTS)];
    buf.put_u8(variants.len() as u8);
    for v in variants {
        let stored_at = wall
            .checked_sub(now.saturating_duration_since(v.response_time))
            .unwrap_or(wall);
        buf.put_u16(v.status.as_u16());
        buf.put_u64(millis(
            stored_at.duration_since(UNIX_EPOCH).unwrap_or_default(),
        ));
        buf.put_u64(millis(v.initial_age));
        buf.put_u64(millis(v.lifetime));
        put_cc(&mut buf, &v.cc);
        put_headers(&mut buf, &v.headers);
        put_len16(&mut buf, v.vary.len());
        for (name, value) in v.vary.iter() {
            put_bytes16(&mut buf, name.as_str().as_bytes());
            match value {
                Some(value) => {
                    buf.put_u8(1);
                    put_bytes32(&mut buf, value);
                }
                None => buf.put_u8(0),
            }
        }
        put_len16(&mut buf, v.tags.len());
        for tag in v.tags.iter() {
            put_bytes32(&mut buf, tag);
        }
        put_bytes32(&mut buf, &v.body.data);
        match &v.body.trailers {
            Some(trailers) => {
                buf.put_u8(1);
                put_headers(&mut buf, trailers);
            }
            None => buf.put_u8(0),
        }
    }
    buf
}

/// Decodes an entry written by [`encode_entry`], ages advanced to `now` /
/// `wall`. The body is a slice of `bytes` (no copy).
pub(crate) fn decode_entry(bytes: Bytes, now: Instant, wall: SystemTime) -> Result<Entry, Invalid> {
    let mut r = Reader(bytes);
    if r.take(3).ok().as_deref() != Some(ENTRY_MAGIC) || r.u8().ok() != Some(VERSION) {
        return Err(Invalid::Version);
    }
    let count = usize::from(r.u8()?);
    if count == 0 || count > MAX_VARIANTS {
        return Err(Invalid::Corrupt);
    }
    let mut variants = Vec::with_capacity(count);
    for _ in 0..count {
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| Invalid::Corrupt)?;
        let stored_at = UNIX_EPOCH + Duration::from_millis(r.u64()?);
        let initial_age = Duration::from_millis(r.u64()?);
        let lifetime = Duration::from_millis(r.u64()?);
        let cc = r.cc()?;
        let headers = r.headers()?;
        let vary = (0..r.u16()?)
            .map(|_| {
                let name = r.name()?;
                let value = match r.u8()? {
                    0 => None,
                    1 => Some(r.bytes32()?),
                    _ => return Err(Invalid::Corrupt),
                };
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?;
        let tags = (0..r.u16()?)
            .map(|_| r.bytes32())
            .collect::<Result<_, _>>()?;
        let data = r.bytes32()?;
        let trailers = match r.u8()? {
            0 => None,
            1 => Some(r.headers()?),
            _ => return Err(Invalid::Corrupt),
        };
        // Time spent in the shared tier (and clock skew the other way, zero)
        // adds to the age the writer saw; the response "arrives" now.
        let waited = wall.duration_since(stored_at).unwrap_or_default();
        variants.push(Arc::new(Variant {
            status,
            headers,
            body: Collected { data, trailers },
            vary,
            cc,
            lifetime,
            initial_age: initial_age.saturating_add(waited),
            response_time: now,
            tags,
            refreshing: AtomicBool::new(false),
            hit_headers: Default::default(),
        }));
    }
    if !r.0.is_empty() {
        return Err(Invalid::Corrupt);
    }
    Ok(variants.into())
}

/// Encodes a purge published by instance `origin`.
pub(crate) fn encode_purge(origin: u64, purge: &Purge) -> Vec<u8> {
    let (kind, arg): (u8, &[u8]) = match purge {
        Purge::Key(key) => (0, key.as_bytes()),
        Purge::Prefix(p) => (1, p),
        Purge::PathPrefix(p) => (2, p),
        Purge::Tag(t) => (3, t),
        Purge::All => (4, &[]),
    };
    let mut buf = Vec::with_capacity(arg.len() + 17);
    buf.put_slice(PURGE_MAGIC);
    buf.put_u8(VERSION);
    buf.put_u64(origin);
    buf.put_u8(kind);
    put_bytes32(&mut buf, arg);
    buf
}

/// Decodes a purge message: the publishing instance and the purge.
pub(crate) fn decode_purge(bytes: Bytes) -> Result<(u64, Purge), Invalid> {
    let mut r = Reader(bytes);
    if r.take(3).ok().as_deref() != Some(PURGE_MAGIC) || r.u8().ok() != Some(VERSION) {
        return Err(Invalid::Version);
    }
    let origin = r.u64()?;
    let kind = r.u8()?;
    let arg = r.bytes32()?;
    if !r.0.is_empty() {
        return Err(Invalid::Corrupt);
    }
    let purge = match kind {
        0 => Purge::Key(Key::from_bytes(arg)),
        1 => Purge::Prefix(arg),
        2 => Purge::PathPrefix(arg),
        3 => Purge::Tag(arg),
        4 if arg.is_empty() => Purge::All,
        _ => return Err(Invalid::Corrupt),
    };
    Ok((origin, purge))
}

fn put_len16(buf: &mut Vec<u8>, n: usize) {
    // Counts are bounded well below this by `http` and the cache itself.
    buf.put_u16(u16::try_from(n).unwrap_or(u16::MAX));
}

fn put_bytes16(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_len16(buf, bytes.len());
    buf.put_slice(&bytes[..bytes.len().min(usize::from(u16::MAX))]);
}

fn put_bytes32(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.put_u32(len);
    buf.put_slice(&bytes[..len as usize]);
}

fn put_headers(buf: &mut Vec<u8>, headers: &HeaderMap) {
    let n = headers.len().min(usize::from(u16::MAX));
    put_len16(buf, n);
    for (name, value) in headers.iter().take(n) {
        put_bytes16(buf, name.as_str().as_bytes());
        put_bytes32(buf, value.as_bytes());
    }
}

fn put_cc(buf: &mut Vec<u8>, cc: &ResponseCc) {
    let flags = [
        cc.surrogate_no_store,
        cc.no_store,
        cc.no_cache,
        cc.private,
        cc.public,
        cc.must_revalidate,
        cc.proxy_revalidate,
        cc.must_understand,
    ];
    let flags = flags
        .iter()
        .enumerate()
        .fold(0u16, |acc, (i, &on)| acc | (u16::from(on) << i));
    buf.put_u16(flags);
    let values = cc_values(cc);
    let present = values
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, v)| acc | (u8::from(v.is_some()) << i));
    buf.put_u8(present);
    for value in values.into_iter().flatten() {
        buf.put_u64(value);
    }
}

fn cc_values(cc: &ResponseCc) -> [Option<u64>; 5] {
    [
        cc.surrogate_max_age,
        cc.max_age,
        cc.s_maxage,
        cc.stale_while_revalidate,
        cc.stale_if_error,
    ]
}

/// Reads from the front of a buffer; every read checks what is left.
struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Corrupt);
        }
        Ok(self.0.split_to(n))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Invalid> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, Invalid> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, Invalid> {
        self.array().map(u64::from_be_bytes)
    }

    fn bytes32(&mut self) -> Result<Bytes, Invalid> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn name(&mut self) -> Result<HeaderName, Invalid> {
        let len = usize::from(self.u16()?);
        HeaderName::from_bytes(&self.take(len)?).map_err(|_| Invalid::Corrupt)
    }

    fn headers(&mut self) -> Result<HeaderMap, Invalid> {
        let n = self.u16()?;
        // Each header takes at least 6 bytes: a claimed count beyond what
        // is left is corrupt, and never sizes an allocation.
        if usize::from(n) * 6 > self.0.len() {
            return Err(Invalid::Corrupt);
        }
        let mut headers = HeaderMap::with_capacity(usize::from(n));
        for _ in 0..n {
            let name = self.name()?;
            let value =
                HeaderValue::from_maybe_shared(self.bytes32()?).map_err(|_| Invalid::Corrupt)?;
            headers.append(name, value);
        }
        Ok(headers)
    }

    fn cc(&mut self) -> Result<ResponseCc, Invalid> {
        let flags = self.u16()?;
        let present = self.u8()?;
        if flags >> 8 != 0 || present >> 5 != 0 {
            return Err(Invalid::Corrupt);
        }
        let on = |i: u16| flags & (1 << i) != 0;
        let mut values = [None; 5];
        for (i, value) in values.iter_mut().enumerate() {
            if present & (1 << i) != 0 {
                *value = Some(self.u64()?);
            }
        }
        let [surrogate_max_age, max_age, s_maxage, stale_while_revalidate, stale_if_error] = values;
        Ok(ResponseCc {
            surrogate_max_age,
            surrogate_no_store: on(0),
            max_age,
            s_maxage,
            no_store: on(1),
            no_cache: on(2),
            private: on(3),
            public: on(4),
            must_revalidate: on(5),
            proxy_revalidate: on(6),
            must_understand: on(7),
            stale_while_revalidate,
            stale_if_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn variant() -> Arc<Variant> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cache-control",
            HeaderValue::from_static("max-age=60, stale-if-error=30"),
        );
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Arc::new(Variant {
            status: StatusCode::OK,
            cc: ResponseCc::parse(&headers),
            headers,
            body: Collected {
                data: Bytes::from_static(b"hello \x00\xff body"),
                trailers: Some(trailers),
            },
            vary: vec![
                (
                    HeaderName::from_static("accept-language"),
                    Some(Bytes::from_static(b"fr")),
                ),
                (HeaderName::from_static("x-absent"), None),
            ]
            .into(),
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_secs(5),
            response_time: Instant::now(),
            tags: vec![Bytes::from_static(b"user-1"), Bytes::from_static(b"users")].into(),
            refreshing: AtomicBool::new(false),
            hit_headers: Default::default(),
        })
    }

    #[test]
    fn entries_round_trip_with_their_age() {
        let v = variant();
        let wall = SystemTime::now();
        let bytes = encode_entry(&[v.clone(), v.clone()], v.response_time, wall);
        // Read back ten seconds later, by another instance's clock.
        let later = Instant::now();
        let entry = decode_entry(bytes.into(), later, wall + Duration::from_secs(10)).unwrap();
        assert_eq!(entry.len(), 2);
        let d = &entry[0];
        assert_eq!(d.status, v.status);
        assert_eq!(d.headers, v.headers);
        assert_eq!(d.body.data, v.body.data);
        assert_eq!(d.body.trailers, v.body.trailers);
        assert_eq!(d.vary, v.vary);
        assert_eq!(d.tags, v.tags);
        assert_eq!(d.lifetime, v.lifetime);
        // Stored-at is kept in whole milliseconds, rounded down: older, never younger.
        let age = d.age(later);
        assert!(
            age >= Duration::from_secs(15) && age < Duration::from_millis(15_001),
            "{age:?}"
        );
        assert_eq!(format!("{:?}", d.cc), format!("{:?}", v.cc));
    }

    #[test]
    fn other_versions_and_damage_are_errors() {
        let v = variant();
        let mut bytes = encode_entry(std::slice::from_ref(&v), v.response_time, SystemTime::now());
        let now = Instant::now();
        let wall = SystemTime::now();
        let old = {
            let mut b = bytes.clone();
            b[3] = 0;
            b
        };
        assert_eq!(
            decode_entry(old.into(), now, wall).unwrap_err(),
            Invalid::Version
        );
        for cut in 0..bytes.len() {
            let short = Bytes::copy_from_slice(&bytes[..cut]);
            assert!(decode_entry(short, now, wall).is_err(), "cut at {cut}");
        }
        bytes.push(0);
        assert_eq!(
            decode_entry(bytes.into(), now, wall).unwrap_err(),
            Invalid::Corrupt
        );
    }

    #[test]
    fn purges_round_trip() {
        for purge in [
            Purge::Key(Key::from("http://a/x")),
            Purge::Prefix(Bytes::from_static(b"http://a/")),
            Purge::PathPrefix(Bytes::from_static(b"/users/")),
            Purge::Tag(Bytes::from_static(b"t")),
            Purge::All,
        ] {
            let bytes = encode_purge(42, &purge);
            assert_eq!(decode_purge(bytes.into()).unwrap(), (42, purge));
        }
        assert!(decode_purge(Bytes::from_static(b"tpp\x02")).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_entry(bytes.clone().into(), Instant::now(), SystemTime::now());
            let _ = decode_purge(bytes.into());
        }

        #[test]
        fn damaged_entries_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let v = variant();
            let mut bytes = encode_entry(std::slice::from_ref(&v), v.response_time, SystemTime::now());
            for (at, byte) in flips {
                let at = at % bytes.len();
                bytes[at] ^= byte | 1;
            }
            let _ = decode_entry(bytes.into(), Instant::now(), SystemTime::now());
        }
    }
}
