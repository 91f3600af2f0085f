use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{BufferedBody, Replay, Replayable};

pin_project! {
    /// The response body of [`Coalesce`](super::Coalesce): the inner
    /// service's body, or a shared buffered copy of it (followers), or the
    /// leader's partly read body replayed from its start.
    pub struct CoalesceBody<B: Body> {
        #[pin]
        body: Replayable<B>,
    }
}

impl<B: Body> CoalesceBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            body: Replayable::Untouched { body },
        }
    }

    pub(crate) fn replay(body: Replay<B>) -> Self {
        Self {
            body: Replayable::Replayed { body },
        }
    }

    pub(crate) fn buffered(body: BufferedBody) -> Self {
        Self {
            body: Replayable::Buffered { body },
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
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> std::fmt::Debug for CoalesceBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CoalesceBody")
            .field(&self.body.kind())
            .finish()
    }
}
