//! Behaviour of the coalescing layer at the tower level, under paused time.

#![cfg(feature = "coalesce")]

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use tokio::{task::JoinHandle, time::Instant};
use tower::{util::BoxCloneService, Layer, Service, ServiceExt};
use tower_perf::{
    coalesce::{Coalesce, CoalesceBody, CoalesceLayer, Collapsed, PanicOutcome},
    key::KeyOptions,
};

type Req = Request<Full<Bytes>>;
type ResBody = BoxBody<Bytes, Infallible>;
type Res = Response<ResBody>;
type Backend<E = Infallible> = BoxCloneService<Req, Res, E>;
type Out<E = Infallible> = Result<Response<CoalesceBody<ResBody>>, E>;

const URI: &str = "http://example.com/hot";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::default()).unwrap()
}

fn request(method: Method, uri: &str) -> Req {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::default())
        .unwrap()
}

fn full(data: impl Into<Bytes>) -> ResBody {
    Full::new(data.into()).boxed()
}

/// What a backend answers: the request's method, URI and `accept-language`.
fn echo(req: &Req) -> String {
    let lang = req
        .headers()
        .get(header::ACCEPT_LANGUAGE)
        .map_or("", |v| v.to_str().unwrap());
    format!("{} {} {lang}", req.method(), req.uri())
}

/// A backend that counts its calls, waits `delay`, then echoes the request
/// with a header and trailers.
fn slow(delay: Duration) -> (Backend, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |req: Req| {
        let n = counter.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from(n));
            let body = Full::new(Bytes::from(echo(&req)))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            Ok(Response::builder().header("x-call", n).body(body).unwrap())
        }
    });
    (BoxCloneService::new(svc), calls)
}

/// Sends every request concurrently (one task each) and returns the results
/// in order, with the instant each one completed.
async fn send_all<S, E>(svc: &S, reqs: Vec<Req>) -> Vec<(Out<E>, Instant)>
where
    S: Service<Req, Response = Response<CoalesceBody<ResBody>>, Error = E> + Clone + Send + 'static,
    S::Future: Send,
    E: Send + 'static,
{
    let tasks = spawn_all(svc, reqs);
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

fn spawn_all<S, E>(svc: &S, reqs: Vec<Req>) -> Vec<JoinHandle<(Out<E>, Instant)>>
where
    S: Service<Req, Response = Response<CoalesceBody<ResBody>>, Error = E> + Clone + Send + 'static,
    S::Future: Send,
    E: Send + 'static,
{
    reqs.into_iter()
        .map(|req| {
            let call = svc.clone().oneshot(req);
            tokio::spawn(async move { (call.await, Instant::now()) })
        })
        .collect()
}

async fn body(res: Response<CoalesceBody<ResBody>>) -> (Bytes, Option<HeaderMap>) {
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

fn is_collapsed<B>(res: &Response<B>) -> bool {
    res.extensions().get::<Collapsed>().is_some()
}

async fn burst(n: usize) {
    let (backend, calls) = slow(ms(100));
    let svc = CoalesceLayer::new().layer(backend);
    let results = send_all(&svc, (0..n).map(|_| get(URI)).collect()).await;
    assert_eq!(calls.load(SeqCst), 1);
    let mut collapsed = 0;
    for (res, _) in results {
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-call"], "0");
        collapsed += usize::from(is_collapsed(&res));
        let (data, trailers) = body(res).await;
        assert_eq!(data, format!("GET {URI} "));
        assert_eq!(trailers.unwrap()["x-trailer"], "0");
    }
    assert_eq!(collapsed, n - 1);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_identical_requests_make_one_call() {
    burst(1_000).await;
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_identical_requests_make_one_call() {
    burst(10_000).await;
}

#[tokio::test(start_paused = true)]
async fn sequential_requests_each_lead() {
    let (backend, calls) = slow(ms(10));
    let svc = CoalesceLayer::new().layer(backend);
    for i in 0..3 {
        let res = svc.clone().oneshot(get(URI)).await.unwrap();
        assert!(!is_collapsed(&res));
        assert_eq!(res.headers()["x-call"], i.to_string().as_str());
    }
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_fail_its_followers() {
    let (backend, calls) = slow(ms(100));
    let svc = CoalesceLayer::new().layer(backend);
    let start = Instant::now();
    let leader = spawn_all(&svc, vec![get(URI)]).pop().unwrap();
    tokio::time::sleep(ms(10)).await;
    let followers = spawn_all(&svc, (0..10).map(|_| get(URI)).collect());
    tokio::time::sleep(ms(10)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for follower in followers {
        let (res, done) = follower.await.unwrap();
        let res = res.unwrap();
        assert!(is_collapsed(&res));
        // The call went on where the leader left it: no restart.
        assert_eq!(done - start, ms(100));
        assert_eq!(body(res).await.0, format!("GET {URI} "));
    }
    assert_eq!(calls.load(SeqCst), 1);
}

/// A backend whose call takes 100 ms and records whether its future was
/// dropped before it finished.
fn watched() -> (Backend, Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicUsize>) {
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (d, f, c) = (dropped.clone(), finished.clone(), calls.clone());
    let svc = tower::service_fn(move |_req: Req| {
        c.fetch_add(1, SeqCst);
        let guard = OnDrop(d.clone());
        let finished = f.clone();
        async move {
            let _guard = guard;
            tokio::time::sleep(ms(100)).await;
            finished.store(true, SeqCst);
            Ok(Response::new(full("done")))
        }
    });
    (BoxCloneService::new(svc), dropped, finished, calls)
}

#[tokio::test(start_paused = true)]
async fn the_work_is_dropped_when_every_waiter_is_gone() {
    let (backend, dropped, finished, calls) = watched();
    let svc = CoalesceLayer::new().layer(backend);
    let leader = spawn_all(&svc, vec![get(URI)]).pop().unwrap();
    tokio::time::sleep(ms(10)).await;
    let followers = spawn_all(&svc, (0..2).map(|_| get(URI)).collect());
    tokio::time::sleep(ms(10)).await;

    // The leader goes: the work moves to a task for the followers.
    leader.abort();
    let _ = leader.await;
    tokio::time::sleep(ms(10)).await;
    assert!(!dropped.load(SeqCst));

    // The followers go: nobody waits, the work is dropped.
    for follower in &followers {
        follower.abort();
    }
    for follower in followers {
        let _ = follower.await;
    }
    tokio::time::sleep(ms(1)).await;
    assert!(dropped.load(SeqCst));
    tokio::time::sleep(ms(200)).await;
    assert!(!finished.load(SeqCst));

    // The key was cleared: the next request calls again.
    let res = svc.clone().oneshot(get(URI)).await.unwrap();
    assert!(!is_collapsed(&res));
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lone_cancelled_leader_drops_its_work() {
    let (backend, dropped, finished, _) = watched();
    let svc = CoalesceLayer::new().layer(backend);
    let leader = spawn_all(&svc, vec![get(URI)]).pop().unwrap();
    tokio::time::sleep(ms(10)).await;
    leader.abort();
    let _ = leader.await;
    assert!(dropped.load(SeqCst));
    tokio::time::sleep(ms(200)).await;
    assert!(!finished.load(SeqCst));
}

/// A backend whose first call panics after 50 ms.
fn panics_once() -> (Backend, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(ms(50)).await;
            if n == 0 {
                panic!("boom");
            }
            Ok(Response::new(full("fine")))
        }
    });
    (BoxCloneService::new(svc), calls)
}

#[tokio::test(start_paused = true)]
async fn a_panic_reaches_every_waiter_as_a_500_and_clears_the_key() {
    let (backend, calls) = panics_once();
    let svc = CoalesceLayer::new().layer(backend);
    let results = send_all(&svc, (0..20).map(|_| get(URI)).collect()).await;
    for (res, _) in results {
        assert_eq!(res.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let res = svc.clone().oneshot(get(URI)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panic_can_be_resumed_in_every_waiter() {
    let (backend, calls) = panics_once();
    let svc = CoalesceLayer::new()
        .on_panic(PanicOutcome::Resume)
        .layer(backend);
    let tasks = spawn_all(&svc, (0..5).map(|_| get(URI)).collect());
    let mut leader_payloads = 0;
    for task in tasks {
        let err = task.await.unwrap_err();
        assert!(err.is_panic());
        let payload = err.into_panic();
        leader_payloads += usize::from(payload.downcast_ref::<&str>() == Some(&"boom"));
    }
    assert_eq!(leader_payloads, 1);
    assert_eq!(svc.clone().oneshot(get(URI)).await.unwrap().status(), 200);
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_call_itself_clears_the_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let backend = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        if counter.fetch_add(1, SeqCst) == 0 {
            panic!("boom in call");
        }
        async { Ok::<_, Infallible>(Response::new(full("fine"))) }
    }));
    let svc = CoalesceLayer::new().layer(backend);
    let task = spawn_all(&svc, vec![get(URI)]).pop().unwrap();
    assert!(task.await.unwrap_err().is_panic());
    let res = svc.clone().oneshot(get(URI)).await.unwrap();
    assert!(!is_collapsed(&res));
    assert_eq!(res.status(), StatusCode::OK);
}

#[derive(Debug)]
struct Unclonable;

#[tokio::test(start_paused = true)]
async fn an_error_goes_to_the_leader_and_followers_get_502() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let backend: Backend<Unclonable> = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, SeqCst);
        async {
            tokio::time::sleep(ms(50)).await;
            Err::<Res, _>(Unclonable)
        }
    }));
    let svc = CoalesceLayer::new().layer(backend);
    let results = send_all(&svc, (0..10).map(|_| get(URI)).collect()).await;
    let (mut errors, mut bad_gateways) = (0, 0);
    for (res, _) in results {
        match res {
            Err(Unclonable) => errors += 1,
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
                bad_gateways += 1;
            }
        }
    }
    assert_eq!((errors, bad_gateways, calls.load(SeqCst)), (1, 9, 1));
}

#[tokio::test(start_paused = true)]
async fn over_the_cap_releases_every_waiter_then_remembers_hit_for_miss() {
    let (backend, calls) = slow(ms(100));
    let svc = CoalesceLayer::new()
        .max_body_size(8)
        .hit_for_miss(Duration::from_secs(5))
        .layer(backend);
    let expected = format!("GET {URI} ");

    // The leader keeps its response; followers are released together at
    // 100 ms and call upstream themselves.
    let start = Instant::now();
    let results = send_all(&svc, (0..10).map(|_| get(URI)).collect()).await;
    let mut finish = Vec::new();
    for (res, done) in results {
        let res = res.unwrap();
        assert!(!is_collapsed(&res));
        assert_eq!(body(res).await.0, expected);
        finish.push(done - start);
    }
    assert_eq!(finish[0], ms(100));
    assert!(finish[1..].iter().all(|d| *d == ms(200)), "{finish:?}");
    assert_eq!(calls.load(SeqCst), 10);

    // Hit-for-miss: nobody queues, all go upstream at once.
    let start = Instant::now();
    let results = send_all(&svc, (0..10).map(|_| get(URI)).collect()).await;
    for (res, done) in results {
        assert_eq!(body(res.unwrap()).await.0, expected);
        assert_eq!(done - start, ms(100));
    }
    assert_eq!(calls.load(SeqCst), 20);

    // Once it expires, the key has a leader again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Instant::now();
    let results = send_all(&svc, (0..10).map(|_| get(URI)).collect()).await;
    assert_eq!(results[1].1 - start, ms(200));
    assert_eq!(calls.load(SeqCst), 30);
}

fn streaming(content_type: &'static str) -> (Backend, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, SeqCst);
        async move {
            let events = futures::stream::unfold(0, |i| async move {
                if i == 3 {
                    return None;
                }
                tokio::time::sleep(ms(10)).await;
                let frame = Frame::data(Bytes::from(format!("data: {i}\n\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            let res = Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(StreamBody::new(events).boxed())
                .unwrap();
            Ok(res)
        }
    });
    (BoxCloneService::new(svc), calls)
}

#[tokio::test(start_paused = true)]
async fn streaming_responses_are_not_shared() {
    for content_type in ["text/event-stream", "application/octet-stream"] {
        let (backend, calls) = streaming(content_type);
        let svc = CoalesceLayer::new().layer(backend);
        let results = send_all(&svc, (0..5).map(|_| get(URI)).collect()).await;
        for (res, _) in results {
            let res = res.unwrap();
            assert!(!is_collapsed(&res));
            assert_eq!(body(res).await.0, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
        }
        assert_eq!(calls.load(SeqCst), 5, "{content_type}");
    }
}

#[tokio::test(start_paused = true)]
async fn event_streams_and_personal_responses_are_not_shared_even_with_a_length() {
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::SET_COOKIE, "session=1"),
        (header::CACHE_CONTROL, "max-age=5, Private"),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let backend = BoxCloneService::new(tower::service_fn(move |_req: Req| {
            counter.fetch_add(1, SeqCst);
            let value = value;
            let name = name.clone();
            async move {
                tokio::time::sleep(ms(10)).await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(name, value)
                        .body(full("data"))
                        .unwrap(),
                )
            }
        }));
        let svc = CoalesceLayer::new().layer(backend);
        send_all(&svc, (0..4).map(|_| get(URI)).collect()).await;
        assert_eq!(calls.load(SeqCst), 4, "{value}");
    }
}

pin_project_lite::pin_project! {
    /// A body that claims 4 bytes and sends 12.
    struct Lying<B> { #[pin] inner: B }
}

impl<B: Body> Body for Lying<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(4)
    }
}

#[tokio::test(start_paused = true)]
async fn the_leader_keeps_every_byte_of_a_body_that_outgrows_the_cap() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let backend = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, SeqCst);
        async {
            tokio::time::sleep(ms(10)).await;
            let chunks = ["abcd", "efgh", "ijkl"]
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
            let body = Lying {
                inner: StreamBody::new(futures::stream::iter(chunks)),
            };
            Ok::<_, Infallible>(Response::new(body.boxed()))
        }
    }));
    let svc = CoalesceLayer::new().max_body_size(6).layer(backend);
    let results = send_all(&svc, (0..3).map(|_| get(URI)).collect()).await;
    for (res, _) in results {
        assert_eq!(body(res.unwrap()).await.0, "abcdefghijkl");
    }
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn followers_go_upstream_after_the_wait_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let backend = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let first = counter.fetch_add(1, SeqCst) == 0;
        async move {
            tokio::time::sleep(if first { ms(10_000) } else { ms(10) }).await;
            Ok::<_, Infallible>(Response::new(full(if first { "slow" } else { "fast" })))
        }
    }));
    let svc = CoalesceLayer::new()
        .wait_timeout(Duration::from_secs(1))
        .max_leader_age(Duration::from_secs(60))
        .layer(backend);
    let start = Instant::now();
    let results = send_all(&svc, (0..5).map(|_| get(URI)).collect()).await;
    let mut it = results.into_iter();
    let (leader, done) = it.next().unwrap();
    assert_eq!(body(leader.unwrap()).await.0, "slow");
    assert_eq!(done - start, ms(10_000));
    for (res, done) in it {
        let res = res.unwrap();
        assert!(!is_collapsed(&res));
        assert_eq!(body(res).await.0, "fast");
        assert_eq!(done - start, ms(1_010));
    }
    assert_eq!(calls.load(SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_leader_past_its_age_takes_no_followers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let backend = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(if n == 0 { ms(10_000) } else { ms(100) }).await;
            Ok::<_, Infallible>(Response::new(full(format!("call {n}"))))
        }
    }));
    let svc = CoalesceLayer::new()
        .max_leader_age(Duration::from_secs(1))
        .wait_timeout(Duration::from_secs(60))
        .layer(backend);
    let old = spawn_all(&svc, vec![get(URI)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new_leader = spawn_all(&svc, vec![get(URI)]);
    tokio::time::sleep(ms(10)).await;
    let follower = spawn_all(&svc, vec![get(URI)]);
    let (res, _) = follower.into_iter().next().unwrap().await.unwrap();
    let res = res.unwrap();
    assert!(is_collapsed(&res));
    assert_eq!(body(res).await.0, "call 1");
    let (res, _) = new_leader.into_iter().next().unwrap().await.unwrap();
    assert_eq!(body(res.unwrap()).await.0, "call 1");
    let (res, _) = old.into_iter().next().unwrap().await.unwrap();
    assert_eq!(body(res.unwrap()).await.0, "call 0");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn different_keys_do_not_collapse() {
    let (backend, calls) = slow(ms(100));
    let svc = CoalesceLayer::new()
        .key_options(KeyOptions::new().header(header::ACCEPT_LANGUAGE))
        .layer(backend);
    let lang = |lang: &str| {
        let mut req = get("http://example.com/a");
        req.headers_mut()
            .insert(header::ACCEPT_LANGUAGE, lang.parse().unwrap());
        req
    };
    let make = || {
        vec![
            get("http://example.com/a"),
            get("http://example.com/b"),
            get("http://example.com/a?x=1"),
            get("http://other.example/a"),
            request(Method::HEAD, "http://example.com/a"),
            lang("fr"),
            lang("de"),
        ]
    };
    let reqs: Vec<Req> = (0..10).flat_map(|_| make()).collect();
    let expected: Vec<String> = reqs.iter().map(echo).collect();
    let results = send_all(&svc, reqs).await;
    assert_eq!(calls.load(SeqCst), 7);
    for ((res, _), expected) in results.into_iter().zip(expected) {
        assert_eq!(body(res.unwrap()).await.0, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn credentials_bypass_by_default() {
    for (name, bypass, expected_calls) in [
        (header::AUTHORIZATION, true, 10),
        (header::COOKIE, true, 10),
        (header::AUTHORIZATION, false, 1),
    ] {
        let (backend, calls) = slow(ms(100));
        let svc = CoalesceLayer::new()
            .bypass_credentials(bypass)
            .layer(backend);
        let reqs = (0..10)
            .map(|_| {
                let mut req = get(URI);
                req.headers_mut()
                    .insert(name.clone(), "secret".parse().unwrap());
                req
            })
            .collect();
        let collapsed = send_all(&svc, reqs)
            .await
            .into_iter()
            .filter(|(res, _)| is_collapsed(res.as_ref().unwrap()))
            .count();
        assert_eq!(collapsed, 10 - expected_calls);
        assert_eq!(calls.load(SeqCst), expected_calls, "{name} bypass={bypass}");
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_conditionals_other_methods_and_declined_keys_bypass() {
    let with_body = || Request::get(URI).body(Full::from("payload")).unwrap();
    let with = |name: header::HeaderName, value: &str| {
        let mut req = get(URI);
        req.headers_mut().insert(name, value.parse().unwrap());
        req
    };
    let cases: Vec<(&str, Box<dyn Fn() -> Req>)> = vec![
        ("body", Box::new(with_body)),
        (
            "if-none-match",
            Box::new(move || with(header::IF_NONE_MATCH, "\"v1\"")),
        ),
        ("range", Box::new(move || with(header::RANGE, "bytes=0-3"))),
        ("options", Box::new(|| request(Method::OPTIONS, URI))),
        ("post", Box::new(|| request(Method::POST, URI))),
        (
            "unknown method",
            Box::new(|| request(Method::from_bytes(b"PURGE").unwrap(), URI)),
        ),
    ];
    for (name, make) in cases {
        let (backend, calls) = slow(ms(100));
        let svc = CoalesceLayer::new().layer(backend);
        send_all(&svc, (0..5).map(|_| make()).collect()).await;
        assert_eq!(calls.load(SeqCst), 5, "{name}");
    }

    let (backend, calls) = slow(ms(100));
    let declines = KeyOptions::new().key_fn(|head| (head.uri.path() != "/hot").then(String::new));
    let svc = CoalesceLayer::new().key_options(declines).layer(backend);
    send_all(&svc, (0..5).map(|_| get(URI)).collect()).await;
    assert_eq!(calls.load(SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_write_forgets_the_in_flight_reads_of_its_target() {
    // Keys of method and target alone, and keys with request-header lines.
    for key_options in [
        KeyOptions::new(),
        KeyOptions::new().header(header::ACCEPT_LANGUAGE),
    ] {
        a_write_forgets_the_in_flight_reads(key_options).await;
    }
}

async fn a_write_forgets_the_in_flight_reads(key_options: KeyOptions) {
    let version = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let (v, r) = (version.clone(), reads.clone());
    let backend = BoxCloneService::new(tower::service_fn(move |req: Req| {
        let (v, r) = (v.clone(), r.clone());
        async move {
            if req.method() == Method::GET {
                r.fetch_add(1, SeqCst);
                let seen = v.load(SeqCst);
                tokio::time::sleep(ms(100)).await;
                Ok::<_, Infallible>(Response::new(full(format!("v{seen}"))))
            } else {
                v.fetch_add(1, SeqCst);
                Ok(Response::new(full("written")))
            }
        }
    }));
    let svc = CoalesceLayer::new().key_options(key_options).layer(backend);
    let first = spawn_all(&svc, vec![get(URI), get(URI)]);
    tokio::time::sleep(ms(10)).await;
    let (written, _) = send_all(&svc, vec![request(Method::PUT, URI)])
        .await
        .pop()
        .unwrap();
    assert_eq!(body(written.unwrap()).await.0, "written");
    let after = spawn_all(&svc, vec![get(URI), get(URI)]);
    for task in first {
        assert_eq!(body(task.await.unwrap().0.unwrap()).await.0, "v0");
    }
    for task in after {
        assert_eq!(body(task.await.unwrap().0.unwrap()).await.0, "v1");
    }
    assert_eq!(reads.load(SeqCst), 2);
}

/// An inner service with per-instance readiness that panics when an
/// instance is called without having been polled ready, and answers
/// `Pending` on each instance's first poll.
struct Probe {
    state: ProbeState,
    calls: Arc<AtomicUsize>,
    body: &'static str,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum ProbeState {
    Fresh,
    Polled,
    Ready,
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        Self {
            state: ProbeState::Fresh,
            calls: self.calls.clone(),
            body: self.body,
        }
    }
}

impl Service<Req> for Probe {
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.state {
            ProbeState::Fresh => {
                self.state = ProbeState::Polled;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => {
                self.state = ProbeState::Ready;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        assert_eq!(
            self.state,
            ProbeState::Ready,
            "called an instance not polled ready"
        );
        self.state = ProbeState::Fresh;
        self.calls.fetch_add(1, SeqCst);
        let body = self.body;
        Box::pin(async move {
            tokio::time::sleep(ms(100)).await;
            Ok(Response::new(full(body)))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn only_instances_polled_ready_are_called() {
    for (text, max, wait, expected_calls) in [
        ("shared", 1024, 60, 1),  // leader + followers
        ("too large", 4, 60, 20), // released followers go upstream
        ("shared", 1024, 0, 20),  // timed-out followers go upstream
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = Probe {
            state: ProbeState::Fresh,
            calls: calls.clone(),
            body: text,
        };
        let svc = CoalesceLayer::new()
            .max_body_size(max)
            .wait_timeout(Duration::from_secs(wait))
            .layer(probe);
        for (res, _) in send_all(&svc, (0..20).map(|_| get(URI)).collect()).await {
            assert_eq!(body(res.unwrap()).await.0, text);
        }
        assert_eq!(calls.load(SeqCst), expected_calls, "{text} wait={wait}");
    }
}

#[tokio::test]
async fn poll_ready_forwards_to_the_inner_service() {
    let (mut svc, mut handle) = tower_test::mock::spawn_with(|mock| {
        CoalesceLayer::new().layer(tower::util::MapResponse::new(
            mock,
            |res: Response<Full<Bytes>>| res.map(|b| b.boxed()),
        ))
    });
    handle.allow(0);
    tokio_test::assert_pending!(svc.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let res = svc.call(get(URI));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri(), URI);
    send.send_response(Response::new(Full::from("mocked")));
    assert_eq!(body(res.await.unwrap()).await.0, "mocked");
}

#[test]
fn metrics_count_leaders_followers_and_bypasses() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, CoalesceLayer::new);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (backend, _) = slow(ms(100));
        let svc: Coalesce<Backend> = layer.layer(backend);
        let mut reqs: Vec<Req> = (0..10).map(|_| get(URI)).collect();
        reqs.push(request(Method::POST, URI));
        reqs.push(request(Method::DELETE, "http://example.com/other"));
        send_all(&svc, reqs).await;
    });
    let mut counts = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let role = key.key().labels().next().unwrap().value().to_owned();
        assert_eq!(key.key().name(), "tower_perf_coalesce_requests_total");
        if let DebugValue::Counter(n) = value {
            counts.insert(role, n);
        }
    }
    let expected = [("bypass", 2), ("follower", 9), ("leader", 1)]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
    assert_eq!(counts, expected);
}
