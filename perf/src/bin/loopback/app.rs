//! The app under test: the same axum routes for every contender, each
//! contender with its own instance (own counters, own "database").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::Service;

/// Body of `/static/1k`.
pub const SMALL: usize = 1024;
/// Body of `/static/100k`.
pub const LARGE: usize = 100 * 1024;
/// `Cache-Control` of the static routes: the TTL every cache is given.
pub const STATIC_CACHE_CONTROL: &str = "max-age=60";
/// The same TTL for caches that take a fixed TTL instead of reading `max-age`.
pub const STATIC_TTL: Duration = Duration::from_secs(60);

/// The simulated database: `permits` queries at a time (FIFO queue behind
/// them), each taking `latency`.
#[derive(Clone, Copy, Debug)]
pub struct Db {
    pub permits: usize,
    pub latency: Duration,
}

impl Db {
    /// Requests per second the database completes when saturated.
    pub fn capacity(&self) -> f64 {
        self.permits as f64 / self.latency.as_secs_f64()
    }
}

/// Handler invocations of one app instance: what reached the "backend".
#[derive(Debug, Default)]
pub struct Calls(AtomicU64);

impl Calls {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn hit(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    calls: Arc<Calls>,
    db: Arc<Semaphore>,
    db_latency: Duration,
    small: Bytes,
    large: Bytes,
}

/// One instance of the app's routes:
///
/// - `/trivial`: `"ok"`, the smallest handler axum can run;
/// - `/static/1k`, `/static/100k`: static bodies with `Cache-Control: max-age=60`;
/// - `/db/{key}`: a query against the bounded database (no cache headers).
pub fn routes(db: Db, calls: Arc<Calls>) -> Router {
    let state = AppState {
        calls,
        db: Arc::new(Semaphore::new(db.permits)),
        db_latency: db.latency,
        small: Bytes::from(vec![b'a'; SMALL]),
        large: Bytes::from(vec![b'b'; LARGE]),
    };
    Router::new()
        .route("/trivial", get(trivial))
        .route("/static/1k", get(|s: State<AppState>| stat(s, false)))
        .route("/static/100k", get(|s: State<AppState>| stat(s, true)))
        .route("/db/{key}", get(query))
        .with_state(state)
}

async fn trivial(State(s): State<AppState>) -> &'static str {
    s.calls.hit();
    "ok"
}

async fn stat(State(s): State<AppState>, large: bool) -> impl IntoResponse {
    s.calls.hit();
    let body = if large { s.large } else { s.small };
    (
        [
            (header::CACHE_CONTROL, STATIC_CACHE_CONTROL),
            (header::CONTENT_TYPE, "text/plain"),
        ],
        body,
    )
}

async fn query(State(s): State<AppState>, Path(key): Path<String>) -> String {
    s.calls.hit();
    // The semaphore is FIFO: past its permits, queries queue and latency rises.
    let _permit = s.db.acquire().await.expect("never closed");
    tokio::time::sleep(s.db_latency).await;
    format!("row {key}")
}

/// What a contender serves: the routes, possibly wrapped by outer layers, boxed
/// so every contender (bare included) pays the same one box per request.
pub type App = BoxCloneService<Request, Response, Infallible>;

/// Boxes a service into an [`App`]. Errors become responses the way an axum
/// user maps them: tower's `Overloaded` is 503, anything else 500.
pub fn app<S>(svc: S) -> App
where
    S: Service<Request> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(Respond {
        inner: svc,
        failed: None,
    })
}

fn error_response(err: impl Into<BoxError>) -> Response {
    let status = if err.into().is::<tower::load_shed::error::Overloaded>() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    status.into_response()
}

/// Answers errors (from `poll_ready` too) with a response.
struct Respond<S> {
    inner: S,
    failed: Option<Response>,
}

impl<S: Clone> Clone for Respond<S> {
    fn clone(&self) -> Self {
        Respond {
            inner: self.inner.clone(),
            failed: None,
        }
    }
}

impl<S> Service<Request> for Respond<S>
where
    S: Service<Request>,
    S::Response: IntoResponse,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Responding<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_none() {
            if let Err(err) = ready!(self.inner.poll_ready(cx)) {
                self.failed = Some(error_response(err));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.failed.take() {
            Some(res) => Responding::Failed { res: Some(res) },
            None => Responding::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    #[project = Proj]
    pub(crate) enum Responding<F> {
        Inner { #[pin] fut: F },
        Failed { res: Option<Response> },
    }
}

impl<F, R, E> Future for Responding<F>
where
    F: Future<Output = Result<R, E>>,
    R: IntoResponse,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match self.project() {
            Proj::Inner { fut } => match ready!(fut.poll(cx)) {
                Ok(res) => res.into_response(),
                Err(err) => error_response(err),
            },
            Proj::Failed { res } => res.take().expect("polled after completion"),
        }))
    }
}

/// A response with its body collected: the `Clone` shape a peer that shares
/// or stores responses needs (axum's `Response` is neither `Clone` nor `Sync`).
#[derive(Clone, Debug)]
pub struct Buffered {
    parts: http::response::Parts,
    body: Bytes,
}

impl Buffered {
    /// Collects a response's body (one frame for these handlers: no copy).
    pub async fn collect(res: Response) -> Self {
        let (parts, body) = res.into_parts();
        match body.collect().await {
            Ok(c) => Buffered {
                parts,
                body: c.to_bytes(),
            },
            Err(_) => Buffered::collect_error(),
        }
    }

    fn collect_error() -> Self {
        let (parts, ()) = Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(())
            .expect("static response")
            .into_parts();
        Buffered {
            parts,
            body: Bytes::new(),
        }
    }

    /// As a response with a `Sync` body of exact size.
    pub fn into_full(self) -> http::Response<Full<Bytes>> {
        http::Response::from_parts(self.parts, Full::new(self.body))
    }
}

impl IntoResponse for Buffered {
    fn into_response(self) -> Response {
        Response::from_parts(self.parts, Body::from(self.body))
    }
}
