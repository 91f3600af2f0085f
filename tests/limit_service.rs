//! The limiter as a tower service: readiness, admission, permits, queue,
//! partitions, classification, metrics.

#![cfg(feature = "limit")]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, ServiceExt};
use tower_perf::limit::{AdaptiveLimitLayer, Algorithm, Queue, Sample, Window};
use tower_test::mock;

type Res = Response<Full<Bytes>>;

/// Keeps the limit where it is set.
#[derive(Debug, Clone)]
struct Fixed;

impl Algorithm for Fixed {
    fn update(&mut self, limit: usize, _: &Sample) -> usize {
        limit
    }
}

fn fixed(limit: usize) -> AdaptiveLimitLayer<Fixed> {
    AdaptiveLimitLayer::with_algorithm(Fixed).initial_limit(limit)
}

fn ok() -> Res {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

fn status(code: u16) -> Res {
    let mut res = ok();
    *res.status_mut() = StatusCode::from_u16(code).unwrap();
    res
}

#[tokio::test(start_paused = true)]
async fn poll_ready_forwards_and_call_sheds_at_once() {
    let layer = fixed(1);
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<Request<()>, Res, _>(layer);

    // Readiness is the inner service's, whatever the limit.
    inner.allow(0);
    assert_pending!(svc.poll_ready());
    inner.allow(2);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());

    let mut first = task::spawn(svc.call(Request::new(())));
    assert_pending!(first.poll());
    assert_eq!(handle.in_flight(), 1);

    // Over the limit: still ready, and `call` answers at once.
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready_ok!(task::spawn(svc.call(Request::new(()))).poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");

    let (req, send) = inner.next_request().await.unwrap();
    drop(req);
    send.send_response(ok());
    let res = assert_ready_ok!(first.poll());
    assert_eq!(handle.in_flight(), 1, "the permit lives in the body");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(handle.in_flight(), 0);
    let c = handle.counters();
    assert_eq!((c.admitted, c.rejected, c.samples), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn permit_lives_until_the_body_ends_or_is_dropped() {
    let layer = fixed(4);
    let handle = layer.handle();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let svc = layer.layer(tower::service_fn(move |_: Request<()>| {
        let rx = rx.lock().unwrap().take().unwrap();
        async move {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(stream)))
        }
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = Box::pin(res.into_body());
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"a"))))
        .await
        .unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "a"
    );
    assert_eq!(handle.in_flight(), 1);
    drop(body); // the client went away mid-body: released, not sampled
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.counters().samples, 0);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_aborted_requests_leave_nothing_in_flight() {
    let layer = fixed(64).queue(Queue::fifo(64, Duration::from_millis(5)));
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let ms = req.uri().path()[1..].parse::<u64>().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, Infallible>(ok())
    }));
    let mut tasks = Vec::new();
    for i in 0..10_000u64 {
        let svc = svc.clone();
        let req = Request::get(format!("/{}", i % 7)).body(()).unwrap();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(req).await.unwrap();
            // Half the responses are dropped before their body is read.
            if i % 2 == 0 {
                let _ = res.into_body().collect().await;
            }
        }));
        if i % 3 == 0 {
            // Abort a third of them mid-flight, at random-ish points.
            let task = tasks.pop().unwrap();
            tokio::time::sleep(Duration::from_micros(i % 1500)).await;
            task.abort();
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.in_flight(), 0);
    let c = handle.counters();
    assert!(c.admitted > 5_000, "{c:?}");
    assert!(
        c.samples < c.admitted,
        "cancelled requests are not sampled: {c:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fifo_queue_grants_in_order_and_times_out() {
    let layer = fixed(1).queue(Queue::fifo(2, Duration::from_millis(100)));
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<Request<&str>, Res, _>(layer);
    inner.allow(10);

    assert_ready_ok!(svc.poll_ready());
    let mut a = task::spawn(svc.call(Request::new("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut b = task::spawn(svc.call(Request::new("b")));
    assert_ready_ok!(svc.poll_ready());
    let mut c = task::spawn(svc.call(Request::new("c")));
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready_ok!(task::spawn(svc.call(Request::new("d"))).poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "queue full");
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert_eq!(handle.counters().queued, 2);

    let (req, send) = inner.next_request().await.unwrap();
    assert_eq!(*req.body(), "a");
    send.send_response(status(204)); // empty body: released with the head
    assert_eq!(assert_ready_ok!(a.poll()).status(), 204);
    assert!(b.is_woken());
    assert_pending!(b.poll());
    let (req, send) = inner.next_request().await.unwrap();
    assert_eq!(*req.body(), "b", "first in, first out");

    // c waits past its timeout while b holds the only slot.
    tokio::time::sleep(Duration::from_millis(101)).await;
    let res = assert_ready_ok!(c.poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.counters().queue_timeouts, 1);
    send.send_response(status(204));
    assert_ready_ok!(b.poll());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn lifo_queue_serves_the_newest() {
    let layer = fixed(1).queue(Queue::lifo(2, Duration::from_secs(1)));
    let (mut svc, mut inner) = mock::spawn_layer::<Request<&str>, Res, _>(layer);
    inner.allow(10);
    let mut calls = Vec::new();
    for name in ["a", "b", "c"] {
        assert_ready_ok!(svc.poll_ready());
        let mut call = task::spawn(svc.call(Request::new(name)));
        assert_pending!(call.poll());
        calls.push(call);
    }
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response(status(204));
    assert_ready_ok!(calls[0].poll());
    assert_pending!(calls[2].poll());
    let (req, _send) = inner.next_request().await.unwrap();
    assert_eq!(*req.body(), "c", "last in, first out");
    // A waiter dropped in the queue gives nothing back twice.
    drop(calls.remove(1));
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_never_leaks_a_granted_slot() {
    let layer = fixed(1).queue(Queue::fifo(4, Duration::from_secs(1)));
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<Request<()>, Res, _>(layer);
    inner.allow(10);
    assert_ready_ok!(svc.poll_ready());
    let mut a = task::spawn(svc.call(Request::new(())));
    assert_ready_ok!(svc.poll_ready());
    let mut b = task::spawn(svc.call(Request::new(())));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response(status(204));
    assert_ready_ok!(a.poll());
    // b was granted the slot but is dropped before it polls again.
    assert_eq!(handle.in_flight(), 1);
    drop(b);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn partitions_guarantee_their_share() {
    let layer = fixed(10)
        .partition_by_header(HeaderName::from_static("x-class"))
        .partition("live", 0.9)
        .partition("batch", 0.1);
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<Request<()>, Res, _>(layer);
    inner.allow(100);
    let req = |class: &str| Request::get("/").header("x-class", class).body(()).unwrap();
    let mut held = Vec::new();
    // Batch borrows the idle live share up to the whole limit...
    for _ in 0..10 {
        assert_ready_ok!(svc.poll_ready());
        let mut call = task::spawn(svc.call(req("batch")));
        assert_pending!(call.poll());
        held.push(call);
    }
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready_ok!(task::spawn(svc.call(req("batch"))).poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // ...but live still gets its guaranteed 9, over the total.
    for _ in 0..9 {
        assert_ready_ok!(svc.poll_ready());
        let mut call = task::spawn(svc.call(req("live")));
        assert_pending!(call.poll());
        held.push(call);
    }
    assert_eq!(handle.in_flight(), 19);
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready_ok!(task::spawn(svc.call(req("live"))).poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Unpartitioned requests only use what is free.
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready_ok!(task::spawn(svc.call(req("other"))).poll());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    assert_eq!(handle.in_flight(), 0);
}

/// Records every window it sees.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Sample>>>);

impl Algorithm for Recorder {
    fn update(&mut self, limit: usize, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(*sample);
        limit
    }
}

#[tokio::test(start_paused = true)]
async fn outcomes_are_classified() {
    let recorder = Recorder::default();
    let layer = AdaptiveLimitLayer::with_algorithm(recorder.clone())
        .window(Window::new().min_samples(1).min_time(Duration::ZERO));
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let res = match req.uri().path() {
            "/404" => status(404),
            "/500" => status(500),
            "/429" => status(429),
            "/error" => return Err("boom"),
            _ => ok(),
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, &str>(res)
    }));
    let drops = |path: &'static str| {
        let svc = svc.clone();
        let handle = handle.clone();
        async move {
            let before = handle.counters();
            if let Ok(res) = svc.oneshot(Request::get(path).body(()).unwrap()).await {
                let _ = res.into_body().collect().await;
            }
            let after = handle.counters();
            (after.samples - before.samples, after.drops - before.drops)
        }
    };
    assert_eq!(drops("/").await, (1, 0));
    assert_eq!(drops("/404").await, (1, 0));
    assert_eq!(drops("/500").await, (1, 1));
    assert_eq!(drops("/429").await, (1, 1));
    assert_eq!(drops("/error").await, (1, 1));
    let samples = recorder.0.lock().unwrap().clone();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0].rtt, Duration::from_millis(5));
    assert_eq!((samples[2].drops, samples[2].rtt), (1, Duration::ZERO));

    // A cancelled request is not a sample.
    let before = handle.counters();
    let fut = svc.clone().oneshot(Request::get("/").body(()).unwrap());
    let _ = tokio::time::timeout(Duration::from_millis(1), fut).await;
    assert_eq!(handle.counters().samples, before.samples);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_trailers_can_mark_a_drop() {
    let layer = fixed(4).window(Window::new().min_samples(1).min_time(Duration::ZERO));
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "8".parse().unwrap());
        let body = Full::new(Bytes::from_static(b"x"))
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
        Ok::<_, Infallible>(Response::new(body))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "8");
    let c = handle.counters();
    assert_eq!((c.samples, c.drops), (1, 1));
}

#[test]
fn metrics_are_emitted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let svc = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(ok())
        }));
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        let shed = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(res);
    });
    let values: Vec<(String, Vec<String>, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            (key.name().to_string(), labels, value)
        })
        .collect();
    let find = |name: &str, label: Option<&str>| {
        values
            .iter()
            .find(|(n, l, _)| n == name && label.is_none_or(|label| l.iter().any(|x| x == label)))
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("{name} {label:?} missing in {values:?}"))
    };
    assert_eq!(
        find("concurrency_limit.limit", None),
        &DebugValue::Gauge(1.0.into())
    );
    assert_eq!(
        find("concurrency_limit.in_flight", None),
        &DebugValue::Gauge(0.0.into())
    );
    let admitted = find("concurrency_limit.requests", Some("outcome=admitted"));
    assert_eq!(admitted, &DebugValue::Counter(1));
    let rejected = find("concurrency_limit.requests", Some("outcome=rejected"));
    assert_eq!(rejected, &DebugValue::Counter(1));
}

#[test]
fn bad_settings_are_clamped() {
    let layer = AdaptiveLimitLayer::new()
        .min_limit(0)
        .max_limit(0)
        .initial_limit(50);
    assert_eq!(layer.handle().limit(), 1);
    let layer = AdaptiveLimitLayer::new().max_limit(8).initial_limit(50);
    assert_eq!(layer.handle().limit(), 8);
    let w = Window::new()
        .min_samples(0)
        .max_samples(0)
        .percentile(f64::NAN);
    let _ = AdaptiveLimitLayer::new()
        .window(w)
        .queue(Queue::fifo(0, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_queue_rejects() {
    let layer = fixed(1).queue(Queue::fifo(0, Duration::from_secs(1)));
    let (mut svc, mut inner) = mock::spawn_layer::<Request<()>, Res, _>(layer);
    inner.allow(10);
    assert_ready_ok!(svc.poll_ready());
    let mut a = task::spawn(svc.call(Request::new(())));
    assert_pending!(a.poll());
    assert_ready_ok!(svc.poll_ready());
    let res = assert_ready!(task::spawn(svc.call(Request::new(()))).poll()).unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}
