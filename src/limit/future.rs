use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};
use tower_service::Service;

use super::{
    controller::{Permit, Ticket},
    service::overloaded,
    Algorithm, Classify, Outcome, ResponseBody,
};

pin_project! {
    /// Response future of [`AdaptiveLimit`](super::AdaptiveLimit).
    pub struct ResponseFuture<S, ReqBody, A, C>
    where
        S: Service<Request<ReqBody>>,
        A: Algorithm,
    {
        #[pin]
        state: State<S, ReqBody, A, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, A, C>
    where
        S: Service<Request<ReqBody>>,
        A: Algorithm,
    {
        Called {
            #[pin]
            future: S::Future,
            permit: Option<Permit<A>>,
            classifier: Option<C>,
        },
        Waiting {
            ticket: Ticket<A>,
            // Boxed: only queued requests pay for a timer.
            timeout: Pin<Box<Sleep>>,
            call: Option<Box<(S, Request<ReqBody>, C)>>,
        },
        Rejected {
            // Boxed, like the queue's state, to keep the hot future small.
            response: Option<Box<Response<Full<Bytes>>>>,
        },
    }
}

impl<S, ReqBody, A, C> ResponseFuture<S, ReqBody, A, C>
where
    S: Service<Request<ReqBody>>,
    A: Algorithm,
{
    pub(crate) fn called(future: S::Future, permit: Permit<A>, classifier: C) -> Self {
        Self {
            state: State::Called {
                future,
                permit: Some(permit),
                classifier: Some(classifier),
            },
        }
    }

    pub(crate) fn waiting(
        ticket: Ticket<A>,
        timeout: Duration,
        service: S,
        req: Request<ReqBody>,
        classifier: C,
    ) -> Self {
        Self {
            state: State::Waiting {
                ticket,
                timeout: Box::pin(sleep(timeout)),
                call: Some(Box::new((service, req, classifier))),
            },
        }
    }

    pub(crate) fn rejected(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<S, ReqBody, A, C, ResBody> Future for ResponseFuture<S, ReqBody, A, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    A: Algorithm,
    C: Classify,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody, A, C>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Called {
                    future,
                    permit,
                    classifier,
                } => {
                    let result = ready!(future.poll(cx));
                    let permit = permit.take().expect("polled after completion");
                    return Poll::Ready(match result {
                        Ok(res) => {
                            let classifier = classifier.take().expect("polled after completion");
                            let outcome = classifier.classify_response(res.status(), res.headers());
                            Ok(res
                                .map(|body| ResponseBody::inner(body, permit, classifier, outcome)))
                        }
                        Err(err) => {
                            permit.finish(Outcome::Drop);
                            Err(err)
                        }
                    });
                }
                StateProj::Waiting {
                    ticket,
                    timeout,
                    call,
                } => {
                    let permit = match ticket.poll_grant(cx) {
                        Poll::Ready(permit) => permit,
                        Poll::Pending => match timeout.as_mut().poll(cx) {
                            // A slot may have come in just now.
                            Poll::Ready(()) => ticket.cancel(),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    let (mut service, req, classifier) =
                        *call.take().expect("polled after completion");
                    let next = match permit {
                        Some(permit) => State::Called {
                            future: service.call(req),
                            permit: Some(permit),
                            classifier: Some(classifier),
                        },
                        None => {
                            ticket.shared().count_queue_timeout();
                            State::Rejected {
                                response: Some(Box::new(overloaded(ticket.shared(), &req))),
                            }
                        }
                    };
                    state.set(next);
                }
                StateProj::Rejected { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok((*response).map(ResponseBody::overloaded)));
                }
            }
        }
    }
}

impl<S, ReqBody, A, C> fmt::Debug for ResponseFuture<S, ReqBody, A, C>
where
    S: Service<Request<ReqBody>>,
    A: Algorithm,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
