//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses the part it needs

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A whole response as a test client saw it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// Reads the whole of `res`.
    pub(crate) async fn read(res: Response<Incoming>) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Self {
            status,
            headers,
            body,
        }
    }

    /// The `Cache-Status` header, or `""`.
    pub(crate) fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// Whether the cache answered from a stored response.
    pub(crate) fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }

    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}
