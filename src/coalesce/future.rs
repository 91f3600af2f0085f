use std::{
    any::Any,
    future::Future,
    ops::ControlFlow::{self, Break, Continue},
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::{sync::oneshot, time::Sleep};
use tower_service::Service;

use super::{
    body::CoalesceBody,
    flight::{Flight, Outcome, Publisher, Shared, SharedResponse, Waiter},
    Collapsed, PanicOutcome,
};
use crate::{
    body::{collect_capped, BufferedBody, Capped},
    key::Key,
};

pin_project! {
    /// Response future of [`Coalesce`](super::Coalesce).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    /// A follower's state, boxed: followers are the rare case, and the
    /// future of leaders and bypassed requests stays small.
    struct Wait<S, ReqBody> {
        #[pin]
        timeout: Sleep,
        rx: oneshot::Receiver<Outcome>,
        // Taken when the follower leaves the flight (released, timed out).
        waiter: Option<Waiter>,
        // A service clone, polled ready only if the follower goes upstream.
        upstream: Option<(S, Request<ReqBody>)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        /// Not coalesced: the inner service's own future.
        Inner {
            #[pin]
            fut: S::Future,
            // Set for writes: forgets the target's flights when the write ends.
            forget: Option<Forget>,
        },
        /// Drives the one upstream call of its key.
        Leader { leader: Leader<ResBody, S::Error> },
        /// Waits for its leader, then maybe goes upstream itself.
        Follower { wait: Pin<Box<Wait<S, ReqBody>>> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    pub(crate) fn inner(fut: S::Future, forget: Option<Forget>) -> Self {
        Self {
            state: State::Inner { fut, forget },
        }
    }

    pub(crate) fn leader(leader: Leader<ResBody, S::Error>) -> Self {
        Self {
            state: State::Leader { leader },
        }
    }

    pub(crate) fn follower(
        waiter: Waiter,
        rx: oneshot::Receiver<Outcome>,
        timeout: Sleep,
        svc: S,
        req: Request<ReqBody>,
    ) -> Self {
        let wait = Wait {
            timeout,
            rx,
            waiter: Some(waiter),
            upstream: Some((svc, req)),
        };
        Self {
            state: State::Follower {
                wait: Box::pin(wait),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<CoalesceBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let fut = match state.as_mut().project() {
                StateProj::Inner { fut, forget } => {
                    let res = ready!(fut.poll(cx));
                    drop(forget.take());
                    return Poll::Ready(res.map(|res| res.map(CoalesceBody::inner)));
                }
                StateProj::Leader { leader } => return leader.poll(cx),
                StateProj::Follower { wait } => match ready!(wait.as_mut().poll(cx)) {
                    Continue(fut) => fut,
                    Break(done) => return Poll::Ready(done),
                },
            };
            // Released or timed out: the follower's own call.
            state.set(State::Inner { fut, forget: None });
        }
    }
}

impl<S, ReqBody, ResBody> Wait<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    /// `Break` with the follower's result (the leader's shared response, a
    /// failure), `Continue` with its own call when it must go upstream.
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<ControlFlow<Result<Response<CoalesceBody<ResBody>>, S::Error>, S::Future>> {
        let this = self.project();
        if let Some(waiter) = this.waiter {
            match Pin::new(this.rx).poll(cx) {
                Poll::Ready(Ok(Outcome::Shared(shared))) => {
                    return Poll::Ready(Break(Ok(follower_response(shared))))
                }
                Poll::Ready(Ok(Outcome::Failed)) => {
                    return Poll::Ready(Break(Ok(status(StatusCode::BAD_GATEWAY))))
                }
                Poll::Ready(Err(_closed)) => {
                    return Poll::Ready(Break(Ok(panicked(waiter.on_panic(), None))))
                }
                Poll::Ready(Ok(Outcome::Release)) => {}
                // Timed out: go upstream alone.
                Poll::Pending if this.timeout.poll(cx).is_ready() => {}
                Poll::Pending => return Poll::Pending,
            }
            // Leaves the flight.
            *this.waiter = None;
        }
        let (svc, _) = this.upstream.as_mut().expect("polled after completion");
        if let Err(e) = ready!(svc.poll_ready(cx)) {
            return Poll::Ready(Break(Err(e)));
        }
        let (mut svc, req) = this.upstream.take().expect("polled after completion");
        Poll::Ready(Continue(svc.call(req)))
    }
}

/// What the leader's work ends with.
#[allow(clippy::large_enum_variant)] // moved once, when the work ends
pub(crate) enum Led<B: Body, E> {
    /// Buffered and shared with the followers.
    Shared(Arc<SharedResponse>),
    /// Not shareable: the leader keeps it as it streams.
    Own(Response<CoalesceBody<B>>),
    /// The inner service failed.
    Err(E),
}

type Work<B, E> = Pin<Box<dyn Future<Output = Led<B, E>> + Send>>;

/// The leader's upstream call, then the collection of its body and the
/// announcement to the followers.
pub(crate) async fn lead<F, B, E>(fut: F, mut publisher: Publisher) -> Led<B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    let res = match fut.await {
        Ok(res) => res,
        Err(e) => {
            publisher.publish(Outcome::Failed);
            return Led::Err(e);
        }
    };
    let cap = publisher.shared().config.max_body_size;
    let (parts, body) = res.into_parts();
    if !shareable(&parts.headers, &body, cap) {
        publisher.publish(Outcome::Release);
        return Led::Own(Response::from_parts(parts, CoalesceBody::inner(body)));
    }
    if publisher.retire_if_alone() {
        // Nobody to share with: no buffering, no copy.
        return Led::Own(Response::from_parts(parts, CoalesceBody::inner(body)));
    }
    match collect_capped(body, cap).await {
        Capped::Complete(body) => {
            let shared = Arc::new(SharedResponse { parts, body });
            publisher.publish(Outcome::Shared(shared.clone()));
            Led::Shared(shared)
        }
        Capped::Partial(rest) => {
            publisher.publish(Outcome::Release);
            Led::Own(Response::from_parts(parts, CoalesceBody::replay(rest)))
        }
    }
}

/// Whether a response may be buffered and given to other callers: a known
/// length within the cap (an unknown one may be an endless stream), not an
/// event stream, and nothing personal (`Set-Cookie`, `Cache-Control: private`).
pub(crate) fn shareable<B: Body>(headers: &HeaderMap, body: &B, cap: usize) -> bool {
    if !body.size_hint().upper().is_some_and(|n| n <= cap as u64) {
        return false;
    }
    // One pass over the (few) response headers.
    headers.iter().all(|(name, value)| {
        if name == header::SET_COOKIE {
            false
        } else if name == header::CONTENT_TYPE {
            !value.as_bytes().starts_with(b"text/event-stream")
        } else if name == header::CACHE_CONTROL {
            // Unreadable directives count as personal: sharing is the risk.
            value.to_str().is_ok_and(|v| {
                !v.split(',').any(|d| {
                    d.split('=')
                        .next()
                        .is_some_and(|name| name.trim().eq_ignore_ascii_case("private"))
                })
            })
        } else {
            true
        }
    })
}

/// The leader of a flight: polls the work inline (no task, no hop) while it
/// waits, and hands it to a task if it goes away while followers wait.
pub(crate) struct Leader<B: Body, E> {
    work: Option<Work<B, E>>,
    shared: Arc<Shared>,
    flight: Arc<Flight>,
    detach: fn(Work<B, E>) -> Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<B, E> Leader<B, E>
where
    B: Body<Data = Bytes> + Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new<F>(fut: F, publisher: Publisher) -> Self
    where
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B::Error: Send,
    {
        Self {
            shared: publisher.shared().clone(),
            flight: publisher.flight().clone(),
            work: Some(Box::pin(lead(fut, publisher))),
            detach: |work| {
                Box::pin(async move {
                    work.await;
                })
            },
        }
    }
}

impl<B, E> Leader<B, E>
where
    B: Body<Data = Bytes> + Send + 'static,
    E: Send + 'static,
{
    /// A leader whose work is `work(publisher)` rather than [`lead`].
    pub(crate) fn with_work<W>(publisher: Publisher, work: impl FnOnce(Publisher) -> W) -> Self
    where
        W: Future<Output = Led<B, E>> + Send + 'static,
    {
        Self {
            shared: publisher.shared().clone(),
            flight: publisher.flight().clone(),
            work: Some(Box::pin(work(publisher))),
            detach: |work| {
                Box::pin(async move {
                    work.await;
                })
            },
        }
    }
}

impl<B, E> Leader<B, E>
where
    B: Body<Data = Bytes>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<CoalesceBody<B>>, E>> {
        let work = self.work.as_mut().expect("polled after completion");
        // A panic inside the inner service must not leave the followers
        // waiting: it is caught here, and dropping the work closes their channels.
        let led = match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(led)) => led,
            Err(payload) => {
                self.work = None;
                return Poll::Ready(Ok(panicked(self.shared.config.on_panic, Some(payload))));
            }
        };
        self.work = None;
        Poll::Ready(match led {
            Led::Shared(shared) => Ok(response(shared)),
            Led::Own(res) => Ok(res),
            Led::Err(e) => Err(e),
        })
    }
}

impl<B: Body, E> Drop for Leader<B, E> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.shared.leader_gone(&self.flight, (self.detach)(work));
        }
    }
}

impl<B: Body, E> std::fmt::Debug for Leader<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("done", &self.work.is_none())
            .finish()
    }
}

/// A write in progress: when it ends (or is dropped) the in-flight reads of
/// its target are forgotten, so reads issued after it start afresh.
pub(crate) struct Forget {
    pub(crate) shared: Arc<Shared>,
    pub(crate) target: Key,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.shared.forget(&self.target);
    }
}

impl std::fmt::Debug for Forget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forget")
            .field("target", &self.target)
            .finish()
    }
}

fn response<B: Body>(shared: Arc<SharedResponse>) -> Response<CoalesceBody<B>> {
    // The last holder (an uncontended leader) takes the head without a copy.
    let (parts, body) = match Arc::try_unwrap(shared) {
        Ok(shared) => (shared.parts, shared.body.body()),
        Err(shared) => (shared.parts.clone(), shared.body.body()),
    };
    Response::from_parts(parts, CoalesceBody::buffered(body))
}

fn follower_response<B: Body>(shared: Arc<SharedResponse>) -> Response<CoalesceBody<B>> {
    let mut res = response(shared);
    res.extensions_mut().insert(Collapsed);
    res
}

fn status<B: Body>(status: StatusCode) -> Response<CoalesceBody<B>> {
    let mut res = Response::new(CoalesceBody::buffered(BufferedBody::empty()));
    *res.status_mut() = status;
    res
}

fn panicked<B: Body>(
    on_panic: PanicOutcome,
    payload: Option<Box<dyn Any + Send>>,
) -> Response<CoalesceBody<B>> {
    match (on_panic, payload) {
        (PanicOutcome::Resume, Some(payload)) => resume_unwind(payload),
        (PanicOutcome::Resume, None) => {
            panic!("the inner service panicked in the call this request was waiting for")
        }
        _ => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

impl<S, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "Inner",
            State::Leader { .. } => "Leader",
            State::Follower { .. } => "Follower",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}
