use std::{
    any::Any,
    future::Future,
    marker::PhantomData,
    ops::ControlFlow::{self, Break, Continue},
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, response::Parts, HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::{sync::oneshot, time::Sleep};
use tower_service::Service;

use super::{
    body::CoalesceBody,
    flight::{Outcome, Publisher, Shared, SharedResponse, Waiter},
    Collapsed, PanicOutcome,
};
use crate::{
    body::{collect_capped, BufferedBody, Capped, Collected},
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
        Leader { leader: Leader<S::Future, ResBody> },
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

    pub(crate) fn leader(leader: Leader<S::Future, ResBody>) -> Self {
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
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
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
        if this.waiter.is_some() {
            let outcome = match Pin::new(this.rx).poll(cx) {
                Poll::Ready(outcome) => Some(outcome),
                // Timed out: leaves the flight and goes upstream alone.
                Poll::Pending if this.timeout.poll(cx).is_ready() => None,
                Poll::Pending => return Poll::Pending,
            };
            let waiter = this.waiter.take().expect("checked above");
            if let Some(outcome) = outcome {
                // The flight is retired: nothing left to leave.
                let on_panic = waiter.on_panic();
                waiter.finished();
                match outcome {
                    Ok(Outcome::Shared(shared)) => {
                        return Poll::Ready(Break(Ok(follower_response(shared))))
                    }
                    Ok(Outcome::Failed) => {
                        return Poll::Ready(Break(Ok(status(StatusCode::BAD_GATEWAY))))
                    }
                    Err(_closed) => return Poll::Ready(Break(Ok(panicked(on_panic, None)))),
                    Ok(Outcome::Release) => {}
                }
            }
        }
        let (svc, _) = this.upstream.as_mut().expect("polled after completion");
        if let Err(e) = ready!(svc.poll_ready(cx)) {
            return Poll::Ready(Break(Err(e)));
        }
        let (mut svc, req) = this.upstream.take().expect("polled after completion");
        Poll::Ready(Continue(svc.call(req)))
    }
}

/// The leader of a flight. It drives the upstream call inline (no task, no
/// hop) while it waits: the call is boxed so that it can move to a task
/// should the leader go away while followers wait. The body is buffered
/// only when followers wait for it. `P` says which responses are shared.
pub(crate) struct Leader<F, B: Body, P = Http> {
    state: Lead<F, B>,
    /// Announces the outcome; `None` once it did.
    publisher: Option<Publisher>,
    /// The call returned `Pending` once (and started the flight's age clock).
    waited: bool,
    /// Hands the unfinished work to [`Shared::leader_gone`](super::flight::Shared::leader_gone)
    /// (a function pointer: `Drop` cannot name the bounds a task needs).
    detach: fn(Lead<F, B>, Publisher),
    policy: PhantomData<fn() -> P>,
}

/// Which responses a flight shares with its followers.
pub(crate) trait Policy {
    /// Judges the response head (its body unread: only its size hint is known).
    fn head<B: Body>(res: &Response<B>, cap: usize) -> Verdict;
    /// Judges the response once its body is buffered.
    fn complete(parts: &Parts, body: &Collected) -> Verdict;
}

/// A [`Policy`]'s answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Share,
    /// Not shareable: the followers go upstream, and the key is remembered
    /// as hit-for-miss.
    Release,
    /// An error answer: the followers go upstream, and no hit-for-miss
    /// marker is left (an error says nothing about the key's next answer).
    Failed,
}

/// HTTP: any [`shareable`] response.
pub(crate) enum Http {}

impl Policy for Http {
    #[inline]
    fn head<B: Body>(res: &Response<B>, cap: usize) -> Verdict {
        if shareable(res.headers(), res.body(), cap) {
            Verdict::Share
        } else {
            Verdict::Release
        }
    }

    #[inline]
    fn complete(_: &Parts, _: &Collected) -> Verdict {
        Verdict::Share
    }
}

type Collect<B> = Pin<Box<dyn Future<Output = Capped<B>> + Send>>;

enum Lead<F, B: Body> {
    /// The inner service's call.
    Calling(Pin<Box<F>>),
    /// Buffering the response for the followers (boxed: the leader's future
    /// stays small, and moving it cheap, on the common path).
    Collecting(Box<(Parts, Collect<B>)>),
    Done,
}

impl<F, B, E, P> Leader<F, B, P>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    E: Send + 'static,
    P: Policy + 'static,
{
    pub(crate) fn new(fut: F, publisher: Publisher) -> Self {
        Self {
            state: Lead::Calling(Box::pin(fut)),
            publisher: Some(publisher),
            waited: false,
            detach: |state, publisher| {
                let shared = publisher.shared().clone();
                shared.leader_gone(publisher.flight(), detached::<F, B, E, P>(state, publisher));
            },
            policy: PhantomData,
        }
    }
}

impl<F, B, E, P> Leader<F, B, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    P: Policy,
{
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<CoalesceBody<B>>, E>> {
        // A panic inside the inner service must not leave the followers
        // waiting: it is caught here, and dropping the publisher closes
        // their channels and clears the key.
        loop {
            match &mut self.state {
                Lead::Calling(fut) => {
                    let res = match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                        Ok(Poll::Ready(res)) => res,
                        Ok(Poll::Pending) => {
                            if !std::mem::replace(&mut self.waited, true) {
                                self.publisher.as_ref().expect("publishes once").waiting();
                            }
                            return Poll::Pending;
                        }
                        Err(payload) => return Poll::Ready(Ok(self.panicked(payload))),
                    };
                    self.state = Lead::Done;
                    let publisher = self.publisher.as_mut().expect("publishes once");
                    match called::<B, E, P>(res, publisher) {
                        Break(done) => {
                            // Published, or retired alone.
                            self.publisher = None;
                            return Poll::Ready(done);
                        }
                        Continue(collecting) => self.state = Lead::Collecting(collecting),
                    }
                }
                Lead::Collecting(collecting) => {
                    let body = &mut collecting.1;
                    let capped = match catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
                        Ok(Poll::Ready(capped)) => capped,
                        Ok(Poll::Pending) => return Poll::Pending,
                        Err(payload) => return Poll::Ready(Ok(self.panicked(payload))),
                    };
                    let Lead::Collecting(collecting) =
                        std::mem::replace(&mut self.state, Lead::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let publisher = self.publisher.take().expect("publishes once");
                    return Poll::Ready(Ok(
                        match collected::<B, P>(collecting.0, capped, publisher) {
                            Led::Shared(shared) => response(shared),
                            Led::Own(res) => res,
                        },
                    ));
                }
                Lead::Done => panic!("polled after completion"),
            }
        }
    }

    /// The call panicked: its followers learn it as their channels close.
    #[cold]
    fn panicked(&mut self, payload: Box<dyn Any + Send>) -> Response<CoalesceBody<B>> {
        self.state = Lead::Done;
        let publisher = self.publisher.take().expect("publishes once");
        let on_panic = publisher.shared().config.on_panic;
        drop(publisher);
        panicked(on_panic, Some(payload))
    }
}

/// What the leader's buffering ends with.
#[allow(clippy::large_enum_variant)] // moved once, when the buffering ends
enum Led<B: Body> {
    /// Buffered and shared with the followers.
    Shared(Arc<SharedResponse>),
    /// Not shareable after all: the leader keeps it as it streams.
    Own(Response<CoalesceBody<B>>),
}

/// The inner service answered: `Break` with the leader's result when there
/// is nothing to buffer (an error, a response that cannot be shared, or
/// nobody waiting: the uncontended case, streamed through untouched),
/// `Continue` with the buffering of the body for the followers.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn called<B, E, P>(
    res: Result<Response<B>, E>,
    publisher: &mut Publisher,
) -> ControlFlow<Result<Response<CoalesceBody<B>>, E>, Box<(Parts, Collect<B>)>>
where
    B: Body<Data = Bytes> + Send + 'static,
    P: Policy,
{
    let res = match res {
        Ok(res) => res,
        Err(e) => {
            publisher.publish(Outcome::Failed);
            return Break(Err(e));
        }
    };
    let cap = publisher.shared().config.max_body_size;
    let verdict = P::head(&res, cap);
    if verdict != Verdict::Share {
        publisher.release(verdict == Verdict::Release);
        return Break(Ok(res.map(CoalesceBody::inner)));
    }
    if publisher.retire_if_alone() {
        // Nobody to share with: no buffering, no copy.
        return Break(Ok(res.map(CoalesceBody::inner)));
    }
    let (parts, body) = res.into_parts();
    Continue(Box::new((parts, Box::pin(collect_capped(body, cap)))))
}

/// The body was buffered (or found too large): shares it with the followers
/// if the policy agrees, releases them otherwise.
fn collected<B: Body, P: Policy>(
    parts: Parts,
    capped: Capped<B>,
    mut publisher: Publisher,
) -> Led<B> {
    match capped {
        Capped::Complete(body) => match P::complete(&parts, &body) {
            Verdict::Share => {
                let shared = Arc::new(SharedResponse { parts, body });
                publisher.publish(Outcome::Shared(shared.clone()));
                Led::Shared(shared)
            }
            verdict => {
                publisher.release(verdict == Verdict::Release);
                let body = CoalesceBody::buffered(body.body());
                Led::Own(Response::from_parts(parts, body))
            }
        },
        Capped::Partial(rest) => {
            publisher.release(true);
            Led::Own(Response::from_parts(parts, CoalesceBody::replay(rest)))
        }
    }
}

/// The rest of a leader's work, on a task once the leader went away.
async fn detached<F, B, E, P>(state: Lead<F, B>, mut publisher: Publisher)
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    P: Policy,
{
    let collecting = match state {
        Lead::Calling(fut) => match called::<B, E, P>(fut.await, &mut publisher) {
            Break(_) => return,
            Continue(collecting) => collecting,
        },
        Lead::Collecting(collecting) => collecting,
        Lead::Done => return,
    };
    let (parts, body) = *collecting;
    collected::<B, P>(parts, body.await, publisher);
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

impl<F, B: Body, P> Drop for Leader<F, B, P> {
    fn drop(&mut self) {
        // Gone before its work finished: the work moves to a task if
        // followers still wait, and is dropped otherwise.
        if let Some(publisher) = self.publisher.take() {
            let state = std::mem::replace(&mut self.state, Lead::Done);
            (self.detach)(state, publisher);
        }
    }
}

impl<F, B: Body, P> std::fmt::Debug for Leader<F, B, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("done", &self.publisher.is_none())
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
