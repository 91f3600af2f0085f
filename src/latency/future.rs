use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::{
    labels::{classify_error, grpc_code},
    state::Recording,
    LatencyBody,
};

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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut recording = this
            .recording
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(match result {
            Ok(res) => {
                // A trailers-only gRPC response carries its status in the headers.
                let grpc = recording
                    .is_grpc()
                    .then(|| res.headers().get("grpc-status").map(grpc_code))
                    .flatten();
                recording.headers(res.status(), grpc);
                Ok(res.map(|body| LatencyBody::new(body, recording)))
            }
            Err(e) => {
                recording.fail(classify_error(&e));
                Err(e)
            }
        })
    }
}
