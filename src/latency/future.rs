use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::{labels::classify_error, state::Recording, LatencyBody};

pin_project! {
    /// Response future of [`Latency`](super::Latency).
    ///
    /// Dropping it before it completes records the request as `cancelled`.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) recording: Option<Recording>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    E: 'static,
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<LatencyBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The common case in line, the rest (gRPC, clock stopping at the
        // headers) out of line: reading the response's headers in line would
        // hand its address to a call and cost the caller copies of it.
        if this
            .recording
            .as_ref()
            .is_some_and(Recording::reads_headers)
        {
            return poll_reading_headers(this.inner, this.recording, cx);
        }
        let result = ready!(this.inner.poll(cx));
        let mut recording = this
            .recording
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(match result {
            Ok(res) => {
                recording.status(res.status());
                Ok(res.map(|body| LatencyBody::new(body, recording)))
            }
            Err(e) => Err(fail(recording, e)),
        })
    }
}

#[inline(never)]
fn poll_reading_headers<F, B, E>(
    inner: Pin<&mut F>,
    recording: &mut Option<Recording>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<LatencyBody<B>>, E>>
where
    E: 'static,
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
{
    let result = ready!(inner.poll(cx));
    let mut recording = recording
        .take()
        .expect("ResponseFuture polled after completion");
    Poll::Ready(match result {
        Ok(res) => {
            recording.headers(res.status(), res.headers());
            Ok(res.map(|body| LatencyBody::new(body, recording)))
        }
        Err(e) => Err(fail(recording, e)),
    })
}

/// The inner service failed: records why.
fn fail<E: 'static>(mut recording: Recording, e: E) -> E {
    recording.fail(classify_error(&e));
    e
}
