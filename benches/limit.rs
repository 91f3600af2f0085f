//! Admit + release on the adaptive limiter against the bare service.
//!
//! `cargo bench --bench limit -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration calls the service, polls the response future once (the
//! inner service answers at once) and reads the body to its end, so the
//! permit is taken and released and the sample recorded. The difference
//! between the two benchmarks is the limiter's admit + release cost.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    pin::pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_perf::limit::AdaptiveLimitLayer;

#[derive(Clone)]
struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
}

/// One request through `svc`, body drained, without a runtime.
fn round_trip<S, B>(svc: &mut S, cx: &mut Context<'_>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    let _ = svc.poll_ready(cx);
    let fut = pin!(svc.call(Request::new(())));
    let Poll::Ready(Ok(res)) = fut.poll(cx) else {
        unreachable!("the inner service is ready at once")
    };
    let mut body = pin!(res.into_body());
    while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(cx) {}
}

fn bench(c: &mut Criterion) {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let mut group = c.benchmark_group("limit");
    group.bench_function("bare", |b| {
        let mut svc = Inner;
        b.iter(|| round_trip(&mut svc, &mut cx))
    });
    group.bench_function("admit_release", |b| {
        let mut svc = AdaptiveLimitLayer::new().layer(Inner);
        b.iter(|| round_trip(&mut svc, &mut cx))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
