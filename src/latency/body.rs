use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{labels::Failure, state::Recording};

pin_project! {
    /// Response body of [`Latency`](super::Latency): the inner body, with the
    /// clock stopping when it ends.
    ///
    /// The request is recorded when the body yields its last frame (or
    /// reports `is_end_stream`), with the `grpc-status` of its trailers for
    /// gRPC. Dropped earlier, it is recorded as `cancelled`; an error frame
    /// records `body_error`. Either way the request leaves the
    /// active-requests gauge.
    #[derive(Debug)]
    pub struct LatencyBody<B> {
        #[pin]
        inner: B,
        recording: Option<Recording>,
    }
}

impl<B: Body> LatencyBody<B> {
    #[inline]
    pub(crate) fn new(inner: B, recording: Recording) -> Self {
        let recording = if inner.is_end_stream() {
            recording.end();
            None
        } else {
            Some(recording)
        };
        Self { inner, recording }
    }
}

/// The body ended (or failed): records the request and leaves the
/// active-requests gauge.
#[inline]
fn end(recording: &mut Option<Recording>) {
    if let Some(recording) = recording.take() {
        recording.end();
    }
}

impl<B> Body for LatencyBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(recording) = this.recording {
            let ended = match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        recording.trailers(trailers);
                    }
                    this.inner.is_end_stream()
                }
                Some(Err(_)) => {
                    recording.fail(Failure::Body);
                    true
                }
                None => true,
            };
            if ended {
                end(this.recording);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
