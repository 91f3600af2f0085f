use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{BufferedBody, Replay};

pin_project! {
    /// The response body of [`Coalesce`](super::Coalesce): the inner
    /// service's body, or a shared buffered copy of it (followers), or the
    /// leader's partly read body replayed from its start.
    pub struct CoalesceBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Inner { #[pin] body: B },
        Replay { #[pin] body: Replay<B> },
        Buffered { #[pin] body: BufferedBody },
    }
}

impl<B: Body> CoalesceBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn replay(body: Replay<B>) -> Self {
        Self {
            kind: Kind::Replay { body },
        }
    }

    pub(crate) fn buffered(body: BufferedBody) -> Self {
        Self {
            kind: Kind::Buffered { body },
        }
    }
}

impl<B> Body for CoalesceBody<B>
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
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Replay { body } => body.poll_frame(cx),
            KindProj::Buffered { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay { body } => body.is_end_stream(),
            Kind::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { body } => body.size_hint(),
            Kind::Buffered { body } => body.size_hint(),
        }
    }
}

impl<B: Body> std::fmt::Debug for CoalesceBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
            Kind::Buffered { .. } => "Buffered",
        };
        f.debug_tuple("CoalesceBody").field(&kind).finish()
    }
}
