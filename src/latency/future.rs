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
        let result = ready!(this.inner.poll(cx));
        let mut recording = this
            .recording
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(match result {
            // The common case in line, the rest out of line: handing the
            // response's address to a call would cost the caller copies.
            Ok(res) if !recording.reads_headers() => {
                recording.status(res.status());
                Ok(res.map(|body| LatencyBody::new(body, recording)))
            }
            Ok(res) => Ok(read_headers(res, recording)),
            Err(e) => {
                recording.fail(classify_error(&e));
                Err(e)
            }
        })
    }
}

#[inline(never)]
fn read_headers<B: http_body::Body>(
    res: Response<B>,
    mut recording: Recording,
) -> Response<LatencyBody<B>> {
    recording.headers(res.status(), res.headers());
    res.map(|body| LatencyBody::new(body, recording))
}
