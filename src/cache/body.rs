use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{
    layer::Shared,
    store::{self, Variant},
};
use crate::{
    body::{BufferedBody, Collected, Sink, Tee},
    key::Key,
};

pin_project! {
    /// The response body of [`CacheService`](super::CacheService): a stored
    /// body served from memory, or the inner body streamed to the client
    /// (and copied into the cache when the response is stored).
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { body: BufferedBody },
        Upstream { #[pin] body: Tee<B, Inserter> },
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn cached(body: BufferedBody) -> Self {
        Self {
            kind: Kind::Cached { body },
        }
    }

    pub(crate) fn upstream(body: Tee<B, Inserter>) -> Self {
        Self {
            kind: Kind::Upstream { body },
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cached { .. } => f.write_str("CacheBody::Cached"),
            Kind::Upstream { .. } => f.write_str("CacheBody::Upstream"),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Cached { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
            KindProj::Upstream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { body } => body.is_end_stream(),
            Kind::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { body } => body.size_hint(),
            Kind::Upstream { body } => body.size_hint(),
        }
    }
}

/// Stores a response once its body has been collected in full.
pub(crate) struct Inserter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: Key,
    /// The stored response, its body still empty. Already in the `Arc` it
    /// is stored in, held by nobody else until then.
    pub(crate) variant: Arc<Variant>,
    /// A gRPC read: stored only if the call succeeded (`grpc-status: 0`).
    pub(crate) grpc: bool,
}

impl Sink for Inserter {
    fn complete(mut self, collected: Collected) {
        let Some(variant) = Arc::get_mut(&mut self.variant) else {
            return;
        };
        if !length_matches(&variant.headers, &collected)
            || (self.grpc && !crate::grpc::succeeded(&variant.headers, &collected))
        {
            return;
        }
        // The server derived it from the body; a hit (and HEAD) needs it stored.
        variant
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| collected.data.len().into());
        variant.body = collected;
        store::put_variant(&*self.shared.store, self.key, self.variant);
    }
}

impl fmt::Debug for Inserter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inserter").field("key", &self.key).finish()
    }
}

/// A body whose length disagrees with its `Content-Length` was cut short:
/// never store it.
fn length_matches(headers: &HeaderMap, collected: &Collected) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
        .map_or(true, |len| len == collected.data.len())
}
