//! Cache behaviour over time (paused tokio clock) and the service contract
//! (readiness, inner calls, errors), in process.

#![cfg(feature = "cache")]

use std::{
    convert::Infallible,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_perf::cache::CacheLayer;

type Handler =
    Arc<dyn Fn(&Request<()>, usize) -> Result<Response<Full<Bytes>>, io::Error> + Send + Sync>;

/// A cache over a handler that counts its calls.
struct Harness<S> {
    svc: S,
    calls: Arc<AtomicUsize>,
}

fn harness(
    layer: CacheLayer,
    handler: impl Fn(&Request<()>, usize) -> Result<Response<Full<Bytes>>, io::Error>
        + Send
        + Sync
        + 'static,
) -> Harness<
    impl Service<
            Request<()>,
            Response = Response<tower_perf::cache::CacheBody<Full<Bytes>>>,
            Error = io::Error,
        > + Clone,
> {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler: Handler = Arc::new(handler);
    let counter = calls.clone();
    let inner = service_fn(move |req: Request<()>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let res = handler(&req, n);
        async move { res }
    });
    Harness {
        svc: layer.layer(inner),
        calls,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }
    fn age(&self) -> Option<u64> {
        self.headers
            .get("age")
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }
}

impl<S> Harness<S>
where
    S: Service<
            Request<()>,
            Response = Response<tower_perf::cache::CacheBody<Full<Bytes>>>,
            Error = io::Error,
        > + Clone,
{
    async fn get_with(&self, headers: &[(&str, &str)]) -> Result<Reply, io::Error> {
        self.send(http::Method::GET, headers).await
    }

    async fn send(
        &self,
        method: http::Method,
        headers: &[(&str, &str)],
    ) -> Result<Reply, io::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri("http://example.com/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self.svc.clone().oneshot(req.body(()).unwrap()).await?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn get(&self) -> Reply {
        self.get_with(&[]).await.unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn response(headers: &[(&str, String)], body: String) -> Result<Response<Full<Bytes>>, io::Error> {
    let mut res = Response::builder();
    for (k, v) in headers {
        res = res.header(*k, v);
    }
    Ok(res.body(Full::new(Bytes::from(body))).unwrap())
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[tokio::test(start_paused = true)]
async fn age_grows_on_hits_until_stale() {
    let h = harness(CacheLayer::new(), |_, n| {
        response(&[("cache-control", "max-age=60".into())], format!("v{n}"))
    });
    h.get().await;
    advance(Duration::from_secs(10)).await;
    let hit = h.get().await;
    assert_eq!(hit.age(), Some(10));
    assert_eq!(hit.cache_status(), "tower-perf; hit; ttl=50");
    // Hits within one second share their header values; the next second
    // gets its own.
    let again = h.get().await;
    assert_eq!(
        (again.age(), again.cache_status()),
        (Some(10), "tower-perf; hit; ttl=50")
    );
    advance(Duration::from_secs(1)).await;
    let later = h.get().await;
    assert_eq!(
        (later.age(), later.cache_status()),
        (Some(11), "tower-perf; hit; ttl=49")
    );
    advance(Duration::from_secs(50)).await;
    let stale = h.get().await;
    assert_eq!(stale.body, "v2");
    assert_eq!(
        stale.cache_status(),
        "tower-perf; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn expires_minus_date_gives_freshness() {
    let h = harness(CacheLayer::new(), |_, n| {
        let now = SystemTime::now();
        response(
            &[
                ("date", http_date(now)),
                ("expires", http_date(now + Duration::from_secs(30))),
            ],
            format!("v{n}"),
        )
    });
    h.get().await;
    advance(Duration::from_secs(20)).await;
    assert_eq!(h.get().await.body, "v1");
    advance(Duration::from_secs(11)).await;
    assert_eq!(h.get().await.body, "v2");
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness_from_last_modified() {
    let h = harness(CacheLayer::new(), |_, n| {
        let now = SystemTime::now();
        response(
            &[
                ("date", http_date(now)),
                (
                    "last-modified",
                    http_date(now - Duration::from_secs(10_000)),
                ),
            ],
            format!("v{n}"),
        )
    });
    h.get().await;
    advance(Duration::from_secs(500)).await;
    assert_eq!(h.get().await.body, "v1", "10% of 10 000 s is fresh");
    advance(Duration::from_secs(501)).await;
    // Stale: revalidated with If-Modified-Since; this origin answers 200.
    assert_eq!(h.get().await.body, "v2");
}

#[tokio::test(start_paused = true)]
async fn default_ttl_is_opt_in() {
    let handler = |_: &Request<()>, n| response(&[], format!("v{n}"));
    let h = harness(CacheLayer::new(), handler);
    h.get().await;
    assert_eq!(
        h.get().await.body,
        "v2",
        "no freshness, no validator: not stored"
    );

    let h = harness(
        CacheLayer::new().default_ttl(Duration::from_secs(10)),
        handler,
    );
    h.get().await;
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.get().await.body, "v1");
    advance(Duration::from_secs(6)).await;
    assert_eq!(h.get().await.body, "v2");
}

#[tokio::test(start_paused = true)]
async fn no_cache_responses_are_revalidated_every_time() {
    let h = harness(CacheLayer::new(), |req, n| {
        if req.headers().get("if-none-match").is_some() {
            return Ok(Response::builder()
                .status(304)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
        response(
            &[
                ("cache-control", "no-cache".into()),
                ("etag", "\"e\"".into()),
            ],
            format!("v{n}"),
        )
    });
    h.get().await;
    for expected_calls in 2..5 {
        let res = h.get().await;
        assert_eq!(res.body, "v1");
        assert!(res.cache_status().contains("fwd=stale; fwd-status=304"));
        assert_eq!(h.calls(), expected_calls);
    }
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let h = harness(CacheLayer::new(), |_, n| {
        response(
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=60".into(),
            )],
            format!("v{n}"),
        )
    });
    h.get().await;
    advance(Duration::from_secs(5)).await;
    let (a, b) = tokio::join!(h.get(), h.get());
    for stale in [&a, &b] {
        assert_eq!(stale.body, "v1");
        assert!(stale
            .cache_status()
            .contains("detail=stale-while-revalidate"));
        assert_eq!(stale.age(), Some(5));
    }
    // Let the background refresh finish.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.calls(), 2, "one background refresh for both");
    let fresh = h.get().await;
    assert_eq!(fresh.body, "v2");
    assert!(fresh.cache_status().contains("; hit"));
    // Past the window: revalidate in the foreground.
    advance(Duration::from_secs(100)).await;
    assert_eq!(h.get().await.body, "v3");
}

#[tokio::test(start_paused = true)]
async fn a_stale_head_refreshes_the_entry_with_a_get() {
    let h = harness(CacheLayer::new(), |req, n| {
        assert_eq!(
            req.method(),
            http::Method::GET,
            "HEAD never reaches the origin here"
        );
        response(
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=60".into(),
            )],
            format!("v{n}"),
        )
    });
    h.get().await;
    advance(Duration::from_secs(5)).await;
    let head = h.send(http::Method::HEAD, &[]).await.unwrap();
    assert!(head.body.is_empty());
    assert!(head
        .cache_status()
        .contains("detail=stale-while-revalidate"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.calls(), 2);
    assert_eq!(h.get().await.body, "v2");
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_is_capped_by_the_layer() {
    let layer = CacheLayer::new().max_stale_while_revalidate(Duration::from_secs(2));
    let h = harness(layer, |_, n| {
        response(
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=60".into(),
            )],
            format!("v{n}"),
        )
    });
    h.get().await;
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.get().await.body, "v2");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_inner_errors() {
    for (cc, served) in [
        ("max-age=1, stale-if-error=60", true),
        ("max-age=1", false),
        ("max-age=1, stale-if-error=60, proxy-revalidate", false),
    ] {
        let h = harness(CacheLayer::new(), move |_, n| {
            if n > 1 {
                return Err(io::Error::other("backend down"));
            }
            response(&[("cache-control", cc.into())], "good".into())
        });
        h.get().await;
        advance(Duration::from_secs(5)).await;
        let res = h.get_with(&[]).await;
        match res {
            Ok(res) if served => {
                assert_eq!(res.body, "good");
                assert!(res.cache_status().contains("detail=stale-if-error"));
            }
            Err(e) if !served => assert_eq!(e.to_string(), "backend down"),
            Ok(res) => panic!("{cc}: unexpected {}", res.status),
            Err(e) => panic!("{cc}: unexpected {e}"),
        }
        // The request's own stale-if-error works past the response's window,
        // unless the response forbids serving stale.
        advance(Duration::from_secs(100)).await;
        let res = h
            .get_with(&[("cache-control", "stale-if-error=1000")])
            .await;
        assert_eq!(res.is_ok(), !cc.contains("revalidate"), "{cc}");
    }
}

#[tokio::test]
async fn readiness_is_forwarded_and_hits_never_reach_the_inner_service() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(CacheLayer::new());

    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let miss = svc.call(Request::get("http://a.example/k").body(()).unwrap());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/k");
    send.send_response(
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(Full::new(Bytes::from_static(b"stored")))
            .unwrap(),
    );
    let res = miss.await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "stored"
    );

    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let hit = svc
        .call(Request::get("http://a.example/k").body(()).unwrap())
        .await
        .unwrap();
    assert!(hit.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "stored"
    );
    assert_pending!(handle.poll_request());
}

#[tokio::test]
async fn errors_pass_through_unchanged() {
    let svc = CacheLayer::new().layer(service_fn(|_: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::other("boom"))
    }));
    let err = svc
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");

    // Infallible stays Infallible.
    let svc = CacheLayer::new().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let _: Result<_, Infallible> = svc.oneshot(Request::get("/").body(()).unwrap()).await;
}

#[tokio::test]
async fn request_bodies_need_not_be_sync() {
    use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _};
    type NotSync = UnsyncBoxBody<Bytes, Infallible>;
    let svc = CacheLayer::new().layer(service_fn(|_: Request<NotSync>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap(),
        )
    }));
    for expected in ["fwd=uri-miss", "; hit"] {
        let body = Full::new(Bytes::new()).boxed_unsync();
        let req = Request::get("http://a.example/").body(body).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.contains(expected), "{status}");
        // The copy is stored once the body has been read to its end.
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
}

#[tokio::test(start_paused = true)]
async fn hits_carry_their_own_ages_and_the_serving_layers_status_name() {
    let base = CacheLayer::new();
    // Two layers from one builder share its store.
    let (a, b) = (
        base.clone().cache_status_name("edge-a"),
        base.cache_status_name("edge-b"),
    );
    let handler = |_: &Request<()>, n: usize| {
        response(&[("cache-control", "max-age=60".into())], format!("v{n}"))
    };
    let a = harness(a, handler);
    let b = harness(b, handler);
    assert!(a.get().await.cache_status().contains("stored"));
    for second in 0..3 {
        // Several hits within the second, through both layers.
        for _ in 0..2 {
            let (from_a, from_b) = (a.get().await, b.get().await);
            assert_eq!((from_a.age(), from_b.age()), (Some(second), Some(second)));
            let ttl = format!("ttl={}", 60 - second);
            assert_eq!(from_a.cache_status(), format!("edge-a; hit; {ttl}"));
            assert_eq!(from_b.cache_status(), format!("edge-b; hit; {ttl}"));
            assert_eq!(from_b.body, "v1");
        }
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!((a.calls(), b.calls()), (1, 0));
}
