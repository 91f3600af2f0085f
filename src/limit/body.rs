use std::{
    fmt,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::{controller::Permit, Algorithm, Classify, Outcome};

pin_project! {
    /// Response body of [`AdaptiveLimit`](super::AdaptiveLimit): the inner
    /// body, holding the request's permit until it ends or is dropped, or the
    /// overload response.
    pub struct ResponseBody<B, A: Algorithm, C> {
        #[pin]
        kind: Kind<B>,
        guard: Option<Guard<A, C>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Overloaded { #[pin] body: Full<Bytes> },
    }
}

/// The permit and what decides its outcome.
struct Guard<A: Algorithm, C> {
    permit: Permit<A>,
    classifier: C,
    outcome: Outcome,
}

impl<B: Body, A: Algorithm, C> ResponseBody<B, A, C> {
    pub(crate) fn inner(body: B, permit: Permit<A>, classifier: C, outcome: Outcome) -> Self {
        // A body that is already over is never polled: sample it now.
        let guard = if body.is_end_stream() {
            permit.finish(outcome);
            None
        } else {
            Some(Guard {
                permit,
                classifier,
                outcome,
            })
        };
        Self {
            kind: Kind::Inner { body },
            guard,
        }
    }
}

impl<B, A: Algorithm, C> ResponseBody<B, A, C> {
    pub(crate) fn overloaded(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Overloaded { body },
            guard: None,
        }
    }
}

impl<B, A, C> Body for ResponseBody<B, A, C>
where
    B: Body<Data = Bytes>,
    A: Algorithm,
    C: Classify,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let mut body = match this.kind.project() {
            KindProj::Inner { body } => body,
            KindProj::Overloaded { body } => {
                return body
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(|never| match never {})))
            }
        };
        let frame = ready!(body.as_mut().poll_frame(cx));
        if let Some(mut guard) = this.guard.take() {
            let end = match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let outcome = guard.classifier.classify_trailers(trailers);
                        if outcome != Outcome::Success {
                            guard.outcome = outcome;
                        }
                    }
                    body.is_end_stream()
                }
                Some(Err(_)) => {
                    guard.outcome = Outcome::Drop;
                    true
                }
                None => true,
            };
            if end {
                guard.permit.finish(guard.outcome);
            } else {
                *this.guard = Some(guard);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Overloaded { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Overloaded { body } => body.size_hint(),
        }
    }
}

impl<B, A: Algorithm, C> fmt::Debug for ResponseBody<B, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_permit", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
