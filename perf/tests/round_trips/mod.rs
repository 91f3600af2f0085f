//! Sequential round trips through a service, polled in place, for the
//! allocation tests: each request is built before counting starts, and the
//! count starts after a warm-up (tables, lazily initialised statics).

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use axum::body::HttpBody as Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;

use crate::counting::allocations;

const REQUESTS: usize = 10_000;
const WARM_UP: usize = 100;

/// Allocations per request of `REQUESTS` round trips through `svc` to
/// `uri(i)`, each answered at once with a body of `body_len` bytes.
pub fn allocations_per_request<S, B>(
    mut svc: S,
    uri: impl Fn(usize) -> String,
    body_len: usize,
) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
{
    let requests: Vec<_> = (0..REQUESTS + WARM_UP)
        .map(|i| Request::get(uri(i)).body(Full::default()).unwrap())
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut before = allocations();
    for (i, req) in requests.into_iter().enumerate() {
        if i == WARM_UP {
            before = allocations();
        }
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = pin!(svc.call(req));
        let Poll::Ready(Ok(res)) = fut.poll(&mut cx) else {
            panic!("ready at once")
        };
        let mut body = pin!(res.into_body());
        let mut read = 0;
        while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
            read += frame
                .ok()
                .and_then(|f| f.into_data().ok())
                .map_or(0, |d| d.len());
        }
        assert_eq!(read, body_len);
    }
    (allocations() - before) as f64 / REQUESTS as f64
}

/// A handler answering `body` with `headers`, from static data.
pub fn handler(
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let mut res = Response::new(Full::new(Bytes::from_static(body)));
        for (name, value) in headers {
            res.headers_mut().insert(*name, value.parse().unwrap());
        }
        std::future::ready(Ok::<_, Infallible>(res))
    })
}
