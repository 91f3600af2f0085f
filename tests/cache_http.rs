//! The response cache through a real axum server over TCP.

#![cfg(feature = "cache")]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower_perf::{cache::CacheLayer, key::KeyOptions};

mod common;
use common::Reply;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Server {
    addr: SocketAddr,
    client: HttpClient,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { addr, client }
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        Reply::read(res).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[]).await
    }
}

/// Counts calls to a handler.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn counted<F, R>(calls: &Calls, f: F) -> axum::routing::MethodRouter
where
    F: Fn(Request, usize) -> R + Clone + Send + Sync + 'static,
    R: IntoResponse,
{
    let calls = calls.clone();
    any(move |req: Request| {
        let n = calls.bump();
        let f = f.clone();
        async move { f(req, n).into_response() }
    })
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/a",
            counted(&calls, |_, n| {
                ([("cache-control", "max-age=60")], format!("body {n}"))
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;

    let first = server.get("/a").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "body 1");
    assert_eq!(
        first.cache_status(),
        "tower-perf; fwd=uri-miss; fwd-status=200; stored"
    );
    assert!(first.header("age").is_none());

    let second = server.get("/a").await;
    assert_eq!(second.body, "body 1");
    assert!(second.hit(), "{}", second.cache_status());
    assert!(second.cache_status().contains("ttl="));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.header("content-length"), Some("6"));
    assert_eq!(calls.get(), 1);

    // Another query string is another entry.
    assert_eq!(server.get("/a?x=1").await.body, "body 2");
}

#[tokio::test]
async fn head_is_answered_from_the_stored_get() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/h",
            counted(&calls, |_, _| ([("cache-control", "max-age=60")], "hello")),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;

    // HEAD first goes upstream and stores nothing.
    let head = server.send(Method::HEAD, "/h", &[]).await;
    assert!(head.cache_status().contains("fwd=uri-miss"));
    assert!(!head.cache_status().contains("stored"));
    server.get("/h").await;
    assert_eq!(calls.get(), 2);

    let head = server.send(Method::HEAD, "/h", &[]).await;
    assert!(head.hit());
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn conditional_requests_get_304_from_fresh_entries() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/c",
            counted(&calls, |_, _| {
                (
                    [
                        ("cache-control", "max-age=60"),
                        ("etag", "\"v1\""),
                        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ],
                    "content",
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/c").await;

    let weak = server
        .send(Method::GET, "/c", &[("if-none-match", "W/\"v1\"")])
        .await;
    assert_eq!(weak.status, StatusCode::NOT_MODIFIED);
    assert!(weak.body.is_empty());
    assert_eq!(weak.header("etag"), Some("\"v1\""));
    assert!(weak.hit());

    let other = server
        .send(Method::GET, "/c", &[("if-none-match", "\"v2\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, "content");

    let ims = [("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")];
    assert_eq!(
        server.send(Method::GET, "/c", &ims).await.status,
        StatusCode::NOT_MODIFIED
    );
    let older = [("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")];
    assert_eq!(
        server.send(Method::GET, "/c", &older).await.status,
        StatusCode::OK
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_refreshed_by_304() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/r",
            counted(&calls, |req, _| {
                if req.headers().get("if-none-match").map(|v| v.as_bytes()) == Some(b"\"v1\"") {
                    return (
                        StatusCode::NOT_MODIFIED,
                        [("cache-control", "max-age=100"), ("x-refreshed", "yes")],
                    )
                        .into_response();
                }
                // Already stale on arrival: an upstream cache held it for 10 s.
                (
                    [
                        ("cache-control", "max-age=5"),
                        ("age", "10"),
                        ("etag", "\"v1\""),
                    ],
                    "original",
                )
                    .into_response()
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/r").await;

    let revalidated = server.get("/r").await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, "original");
    assert_eq!(revalidated.header("x-refreshed"), Some("yes"));
    assert_eq!(revalidated.header("cache-control"), Some("max-age=100"));
    assert!(revalidated
        .cache_status()
        .contains("fwd=stale; fwd-status=304"));
    assert_eq!(calls.get(), 2);

    let hit = server.get("/r").await;
    assert!(hit.hit());
    assert_eq!(hit.body, "original");
    assert_eq!(calls.get(), 2);

    // The client's own validator is answered from the refreshed entry.
    let cond = server
        .send(Method::GET, "/r", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn stale_without_validators_is_fetched_again() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/s",
            counted(&calls, |_, n| {
                (
                    [("cache-control", "max-age=5"), ("age", "10")],
                    format!("v{n}"),
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    // Stale on arrival with no validator: nothing to gain from storing it.
    assert!(!server.get("/s").await.cache_status().contains("stored"));
    assert_eq!(server.get("/s").await.body, "v2");
}

#[tokio::test]
async fn vary_selects_variants_and_star_is_never_served() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/v",
            counted(&calls, |req, _| {
                let lang = req
                    .headers()
                    .get("accept-language")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (
                    [("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                    format!("lang={lang}"),
                )
            }),
        )
        .route(
            "/star",
            counted(&calls, |_, _| {
                ([("cache-control", "max-age=60"), ("vary", "*")], "star")
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;

    let fr = [("accept-language", "fr")];
    let en = [("accept-language", "en")];
    assert_eq!(server.send(Method::GET, "/v", &fr).await.body, "lang=fr");
    let miss = server.send(Method::GET, "/v", &en).await;
    assert_eq!(miss.body, "lang=en");
    assert!(miss.cache_status().contains("fwd=vary-miss"));
    assert!(server.send(Method::GET, "/v", &fr).await.hit());
    let hit = server.send(Method::GET, "/v", &en).await;
    assert!(hit.hit());
    assert_eq!(hit.body, "lang=en");
    // Normalised: combined lines and whitespace do not matter.
    let spaced = [("accept-language", "  en ")];
    assert!(server.send(Method::GET, "/v", &spaced).await.hit());
    // Absent is a value of its own.
    assert_eq!(server.get("/v").await.body, "lang=");
    assert_eq!(calls.get(), 3);

    server.get("/star").await;
    let again = server.get("/star").await;
    assert!(!again.hit());
    assert_eq!(calls.get(), 5);
}

#[tokio::test]
async fn unsafe_methods_invalidate_target_and_same_origin_locations() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/items/{id}",
            counted(&calls, |req: Request, n| match *req.method() {
                Method::GET => ([("cache-control", "max-age=60")], format!("v{n}")).into_response(),
                Method::DELETE => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                _ => StatusCode::NO_CONTENT.into_response(),
            }),
        )
        .route(
            "/create",
            any(|| async {
                (
                    StatusCode::CREATED,
                    [
                        ("location", "/items/2"),
                        ("content-location", "http://elsewhere.example/items/3"),
                    ],
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    for id in 1..=3 {
        server.get(&format!("/items/{id}")).await;
    }
    assert!(server.get("/items/1").await.hit());

    let post = server.send(Method::POST, "/items/1", &[]).await;
    assert!(post.cache_status().contains("fwd=method"));
    assert!(!server.get("/items/1").await.hit());

    // An error response invalidates nothing.
    server.send(Method::DELETE, "/items/1", &[]).await;
    assert!(server.get("/items/1").await.hit());

    server.send(Method::POST, "/create", &[]).await;
    assert!(!server.get("/items/2").await.hit(), "same-origin Location");
    assert!(server.get("/items/3").await.hit(), "other origin untouched");

    // Unknown methods are unsafe too.
    let purge = Method::from_bytes(b"PURGE").unwrap();
    server.send(purge, "/items/3", &[]).await;
    assert!(!server.get("/items/3").await.hit());
}

async fn all_hit(server: &Server, paths: [&str; 4]) -> Vec<bool> {
    let mut hits = Vec::new();
    for p in paths {
        hits.push(server.get(p).await.hit());
    }
    hits
}

#[tokio::test]
async fn purge_by_key_prefix_tag_and_all() {
    let calls = Calls::default();
    let layer = CacheLayer::new();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/{*path}",
            counted(&calls, |req: Request, _| {
                let tag = if req.uri().path().starts_with("/users/") {
                    "users all"
                } else {
                    "other all"
                };
                (
                    [("cache-control", "max-age=60"), ("surrogate-key", tag)],
                    "x",
                )
            }),
        )
        .layer(layer);
    let server = Server::start(app).await;
    let paths = ["/users/1", "/users/2", "/posts/1", "/posts/2"];
    for p in paths {
        let first = server.get(p).await;
        assert!(
            first.header("surrogate-key").is_none(),
            "tag header stripped"
        );
    }
    assert_eq!(all_hit(&server, paths).await, [true; 4]);

    handle.purge_key(format!("http://{}/users/1", server.addr).as_str());
    assert_eq!(all_hit(&server, paths).await, [false, true, true, true]);

    handle.purge_path_prefix("/posts/");
    assert_eq!(all_hit(&server, paths).await, [true, true, false, false]);

    handle.purge_tag("users");
    assert_eq!(all_hit(&server, paths).await, [false, false, true, true]);

    handle.purge_all();
    assert_eq!(all_hit(&server, paths).await, [false; 4]);
    assert_eq!(all_hit(&server, paths).await, [true; 4]);
}

#[tokio::test]
async fn set_cookie_responses_are_not_stored_unless_allowed() {
    let route = |calls: &Calls| {
        counted(calls, |_, n| {
            (
                [
                    ("cache-control", "max-age=60"),
                    ("set-cookie", "session=abc"),
                ],
                format!("v{n}"),
            )
        })
    };
    let calls = Calls::default();
    let app = Router::new()
        .route("/c", route(&calls))
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/c").await;
    assert_eq!(server.get("/c").await.body, "v2");

    let calls = Calls::default();
    let app = Router::new()
        .route("/c", route(&calls))
        .layer(CacheLayer::new().store_set_cookie(true));
    let server = Server::start(app).await;
    server.get("/c").await;
    let hit = server.get("/c").await;
    assert!(hit.hit());
    assert_eq!(hit.header("set-cookie"), Some("session=abc"));
}

#[tokio::test]
async fn authorization_requests_are_stored_only_when_the_response_allows() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/private-ish",
            counted(&calls, |_, n| {
                ([("cache-control", "max-age=60")], format!("v{n}"))
            }),
        )
        .route(
            "/public",
            counted(&calls, |_, n| {
                ([("cache-control", "public, max-age=60")], format!("v{n}"))
            }),
        )
        .route(
            "/private",
            counted(&calls, |_, n| {
                ([("cache-control", "private, max-age=60")], format!("v{n}"))
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    let auth = [("authorization", "Bearer secret")];
    server.send(Method::GET, "/private-ish", &auth).await;
    assert!(!server.get("/private-ish").await.hit());
    server.send(Method::GET, "/public", &auth).await;
    assert!(server.get("/public").await.hit());
    server.get("/private").await;
    assert!(!server.get("/private").await.hit());
}

fn chunked(chunks: usize, size: usize) -> Body {
    let stream = futures::stream::iter(
        (0..chunks)
            .map(move |i| Ok::<_, Infallible>(Bytes::from(vec![b'a' + (i % 26) as u8; size]))),
    );
    Body::from_stream(stream)
}

#[tokio::test]
async fn bodies_over_the_cap_stream_through_and_are_not_stored() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/chunked",
            counted(&calls, |_, _| {
                ([("cache-control", "max-age=60")], chunked(10, 1000))
            }),
        )
        .route(
            "/sized",
            counted(&calls, |_, _| {
                ([("cache-control", "max-age=60")], vec![b'x'; 5000])
            }),
        )
        .route(
            "/small",
            counted(&calls, |_, _| {
                ([("cache-control", "max-age=60")], chunked(2, 1000))
            }),
        )
        .layer(CacheLayer::new().max_body_size(4096));
    let server = Server::start(app).await;

    for _ in 0..2 {
        let big = server.get("/chunked").await;
        assert_eq!(big.body.len(), 10_000);
        assert_eq!(big.body[9_999], b'j');
        assert!(!big.hit());
    }
    // Content-Length over the cap: not even announced as stored.
    let sized = server.get("/sized").await;
    assert_eq!(sized.body.len(), 5000);
    assert!(!sized.cache_status().contains("stored"));
    assert!(!server.get("/sized").await.hit());
    // Within the cap, a chunked body is collected while it streams.
    server.get("/small").await;
    let hit = server.get("/small").await;
    assert!(hit.hit());
    assert_eq!(hit.body.len(), 2000);
    assert_eq!(calls.get(), 5);
}

#[tokio::test]
async fn endless_event_streams_pass_unbroken() {
    let app = Router::new()
        .route(
            "/events",
            get(|| async {
                let events = futures::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let event = Bytes::from(format!("data: {n}\n\n"));
                    Some((Ok::<_, Infallible>(event), n + 1))
                });
                (
                    [
                        ("content-type", "text/event-stream"),
                        ("cache-control", "max-age=60"),
                    ],
                    Body::from_stream(events),
                )
            }),
        )
        .layer(CacheLayer::new().max_body_size(64));
    let server = Server::start(app).await;
    let req = hyper::Request::get(format!("http://{}/events", server.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = server.client.request(req).await.unwrap();
    let mut body = res.into_body();
    let mut seen = Vec::new();
    // Far past the 64-byte cap.
    while seen.len() < 2000 {
        let frame = body.frame().await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    assert!(String::from_utf8(seen)
        .unwrap()
        .starts_with("data: 0\n\ndata: 1\n\n"));
}

#[tokio::test]
async fn request_cache_control_directives() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/d",
            counted(&calls, |_, n| {
                (
                    [("cache-control", "max-age=60"), ("etag", "\"e\"")],
                    format!("v{n}"),
                )
            }),
        )
        .route(
            "/old",
            counted(&calls, |_, n| {
                (
                    [
                        ("cache-control", "max-age=5"),
                        ("age", "10"),
                        ("etag", "\"o\""),
                    ],
                    format!("v{n}"),
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;

    let only = [("cache-control", "only-if-cached")];
    assert_eq!(
        server.send(Method::GET, "/d", &only).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(calls.get(), 0);

    let no_store = [("cache-control", "no-store")];
    server.send(Method::GET, "/d", &no_store).await;
    assert!(!server.get("/d").await.hit(), "no-store stored nothing");
    assert!(server.send(Method::GET, "/d", &only).await.hit());

    let no_cache = [("cache-control", "no-cache")];
    let forced = server.send(Method::GET, "/d", &no_cache).await;
    assert!(
        forced.cache_status().contains("fwd=request"),
        "{}",
        forced.cache_status()
    );
    let max_age0 = [("cache-control", "max-age=0")];
    assert!(!server.send(Method::GET, "/d", &max_age0).await.hit());
    let min_fresh = [("cache-control", "min-fresh=3600")];
    assert!(!server.send(Method::GET, "/d", &min_fresh).await.hit());
    assert!(server.get("/d").await.hit());

    // A stale entry: served only when the client accepts staleness.
    server.get("/old").await;
    let stale_ok = [("cache-control", "max-stale=60")];
    let stale = server.send(Method::GET, "/old", &stale_ok).await;
    assert!(stale.hit());
    assert!(
        stale.cache_status().contains("ttl=-5"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.header("age"), Some("10"));
    let too_stale = [("cache-control", "max-stale=1")];
    assert!(!server.send(Method::GET, "/old", &too_stale).await.hit());
    assert_eq!(
        server.send(Method::GET, "/old", &only).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_unless_forbidden() {
    for (cc, served) in [
        ("max-age=5, stale-if-error=60", true),
        ("max-age=5, stale-if-error=60, must-revalidate", false),
        ("max-age=5", false),
    ] {
        let calls = Calls::default();
        let app = Router::new()
            .route(
                "/e",
                counted(&calls, move |_, n| {
                    if n > 1 {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    (
                        [("cache-control", cc), ("age", "10"), ("etag", "\"x\"")],
                        "good",
                    )
                        .into_response()
                }),
            )
            .layer(CacheLayer::new());
        let server = Server::start(app).await;
        server.get("/e").await;
        let res = server.get("/e").await;
        assert_eq!(calls.get(), 2);
        if served {
            assert_eq!(res.status, StatusCode::OK);
            assert_eq!(res.body, "good");
            assert!(res.cache_status().contains("detail=stale-if-error"));
            assert!(res.cache_status().contains("fwd-status=503"));
        } else {
            assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{cc}");
        }
    }
}

#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_are_not_stored() {
    let app = Router::new()
        .route(
            "/h",
            get(|| async {
                let mut res = ([("cache-control", "max-age=60")], "x").into_response();
                let headers = res.headers_mut();
                headers.insert("connection", HeaderValue::from_static("x-hop"));
                headers.insert("x-hop", HeaderValue::from_static("1"));
                headers.insert("x-end", HeaderValue::from_static("2"));
                headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                res
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/h").await;
    let hit = server.get("/h").await;
    assert!(hit.hit());
    assert!(hit.header("x-hop").is_none());
    assert!(hit.header("keep-alive").is_none());
    assert_eq!(hit.header("x-end"), Some("2"));
}

#[tokio::test]
async fn builder_options_apply() {
    let calls = Calls::default();
    let layer = CacheLayer::new()
        .key_options(KeyOptions::new().sort_query(true))
        .cache_status_name("edge-1")
        .tag_header(None)
        .default_ttl(Duration::from_secs(60));
    let app = Router::new()
        .route(
            "/o",
            counted(&calls, |_, _| ([("surrogate-key", "kept")], "no freshness")),
        )
        .layer(layer);
    let server = Server::start(app).await;
    server.get("/o?b=1&a=2").await;
    let hit = server.get("/o?a=2&b=1").await;
    assert!(
        hit.cache_status().starts_with("edge-1; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(hit.header("surrogate-key"), Some("kept"));
    assert_eq!(calls.get(), 1);

    let app = Router::new()
        .route(
            "/o",
            get(|| async { ([("cache-control", "max-age=9")], "x") }),
        )
        .layer(CacheLayer::new().cache_status_header(None));
    let server = Server::start(app).await;
    assert!(server.get("/o").await.headers.get("cache-status").is_none());
}

#[tokio::test]
async fn bad_headers_never_break_the_cache() {
    let app = Router::new()
        .route(
            "/bad",
            get(|| async {
                let mut res = Response::new(Body::from("ok"));
                let headers = res.headers_mut();
                for (name, value) in [
                    (
                        "cache-control",
                        &b"max-age=\"60, private=\xff, s-maxage"[..],
                    ),
                    ("cache-control", b"max-age=-3"),
                    ("age", b"\xfe\xff"),
                    ("age", b"99999999999999999999999999"),
                    ("expires", b"0"),
                    ("date", b"not a date"),
                    ("vary", b"\xff"),
                    ("etag", b"\"unterminated"),
                ] {
                    headers.append(name, HeaderValue::from_bytes(value).unwrap());
                }
                res
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    for _ in 0..2 {
        let weird = [
            ("cache-control", "max-stale=\"abc"),
            ("if-none-match", "\"x"),
        ];
        let res = server.send(Method::GET, "/bad", &weird).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.body, "ok");
        assert!(!res.hit());
    }
}

#[tokio::test]
async fn distinct_urls_stay_within_max_capacity() {
    const CAP: u64 = 2 * 1024 * 1024;
    const URLS: usize = 100_000;
    let layer = CacheLayer::new().max_capacity(CAP);
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/{id}",
            get(|| async { ([("cache-control", "max-age=600")], vec![b'z'; 1024]) }),
        )
        .layer(layer);
    let server = Arc::new(Server::start(app).await);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (server, next) = (server.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= URLS {
                        break;
                    }
                    let res = server.get(&format!("/{i}")).await;
                    assert_eq!(res.body.len(), 1024);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let size = handle.weighted_size();
    assert!(size <= CAP, "{size} > {CAP}");
    // Full, not empty: eviction kept the recent entries.
    assert!(size > CAP / 2, "{size}");
    let entries = handle.entry_count();
    assert!(entries > 500 && entries < 2048, "{entries}");
}

#[tokio::test]
async fn empty_bodies_are_stored_and_upstream_cache_status_is_kept() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/empty",
            counted(&calls, |_, _| {
                (
                    StatusCode::NO_CONTENT,
                    [
                        ("cache-control", "max-age=60"),
                        ("cache-status", "origin-cache; fwd=uri-miss"),
                    ],
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    let first = server.get("/empty").await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    // RFC 9211: the list runs from the origin towards the client.
    assert_eq!(
        first.cache_status(),
        "origin-cache; fwd=uri-miss, tower-perf; fwd=uri-miss; fwd-status=204; stored"
    );
    let hit = server.get("/empty").await;
    assert_eq!(hit.status, StatusCode::NO_CONTENT);
    assert!(
        hit.cache_status().starts_with("tower-perf; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn must_understand_needs_a_known_status() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/{code}",
            counted(&calls, |req: Request, n| {
                let code: u16 = req.uri().path()[1..].parse().unwrap();
                (
                    StatusCode::from_u16(code).unwrap(),
                    [("cache-control", "max-age=60, must-understand, no-store")],
                    format!("v{n}"),
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/200").await;
    assert!(
        server.get("/200").await.hit(),
        "understood: no-store is overridden"
    );
    server.get("/599").await;
    assert!(!server.get("/599").await.hit());
}

#[tokio::test]
async fn surrogate_control_sets_freshness_and_never_leaves() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/s",
            counted(&calls, |_, n| {
                (
                    [
                        ("cache-control", "max-age=0"),
                        ("surrogate-control", "max-age=60"),
                    ],
                    format!("v{n}"),
                )
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    let first = server.get("/s").await;
    assert!(first.header("surrogate-control").is_none());
    let hit = server.get("/s").await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert!(hit.header("surrogate-control").is_none());
    assert_eq!(
        hit.header("cache-control"),
        Some("max-age=0"),
        "browsers still revalidate"
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn invalidation_covers_every_key_header_value() {
    let calls = Calls::default();
    let layer = CacheLayer::new()
        .key_options(KeyOptions::new().header(http::HeaderName::from_static("accept-language")));
    let app = Router::new()
        .route(
            "/k",
            counted(&calls, |req: Request, n| match *req.method() {
                Method::GET => ([("cache-control", "max-age=60")], format!("v{n}")).into_response(),
                _ => StatusCode::OK.into_response(),
            }),
        )
        .layer(layer);
    let server = Server::start(app).await;
    let (fr, en) = ([("accept-language", "fr")], [("accept-language", "en")]);
    server.send(Method::GET, "/k", &fr).await;
    server.send(Method::GET, "/k", &en).await;
    assert!(server.send(Method::GET, "/k", &fr).await.hit());
    assert!(server.send(Method::GET, "/k", &en).await.hit());
    server.send(Method::PUT, "/k", &[]).await;
    assert!(!server.send(Method::GET, "/k", &fr).await.hit());
    assert!(!server.send(Method::GET, "/k", &en).await.hit());
}

#[tokio::test]
async fn an_unstorable_replacement_removes_the_outdated_entry() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/u",
            counted(&calls, |_, n| match n {
                1 => (
                    [
                        ("cache-control", "max-age=5"),
                        ("age", "10"),
                        ("etag", "\"1\""),
                    ],
                    "v1",
                )
                    .into_response(),
                2 => ([("cache-control", "no-store")], "v2").into_response(),
                _ => ([("cache-control", "max-age=60")], "v3").into_response(),
            }),
        )
        .layer(CacheLayer::new());
    let server = Server::start(app).await;
    server.get("/u").await;
    assert_eq!(server.get("/u").await.body, "v2");
    // The stale v1 is gone: a client accepting any staleness gets no v1.
    let stale_ok = [("cache-control", "max-stale")];
    assert_eq!(server.send(Method::GET, "/u", &stale_ok).await.body, "v3");
}
