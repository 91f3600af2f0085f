//! Response-body plumbing shared by the layers: a buffered body that is served
//! from memory as `Bytes` clones, a tee that collects a streaming body up to a
//! cap while it flows to the client, and a capped collector for detached calls.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A whole response body held in memory: data and trailers. Cloning is cheap
/// (a reference count on the data).
#[derive(Clone, Debug, Default)]
pub(crate) struct Collected {
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Collected {
    /// Joins chunks into one buffer: zero-copy when there is a single chunk.
    pub(crate) fn from_chunks(
        mut chunks: Vec<Bytes>,
        len: usize,
        trailers: Option<HeaderMap>,
    ) -> Self {
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(len);
                for chunk in chunks {
                    buf.extend_from_slice(&chunk);
                }
                buf.freeze()
            }
        };
        Self { data, trailers }
    }

    /// A body that replays this response.
    pub(crate) fn body(&self) -> BufferedBody {
        BufferedBody {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone().map(Box::new),
        }
    }
}

/// A body served from memory: at most one data frame, then the trailers.
/// Small (trailers are rare and boxed): response bodies are moved around.
#[derive(Debug, Default)]
pub(crate) struct BufferedBody {
    data: Option<Bytes>,
    trailers: Option<Box<HeaderMap>>,
}

impl BufferedBody {
    /// An empty body (HEAD, 304, rejections).
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    /// A body with `data` and no trailers.
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }
}

impl Body for BufferedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(*t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Receives what a [`Tee`] collected once the body ended within the cap.
/// Dropping a sink without a call to `complete` means "abandoned": the body
/// was too large, failed, or was dropped before its end.
pub(crate) trait Sink: Send + 'static {
    fn complete(self, collected: Collected);
}

struct Collecting<S> {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    sink: S,
}

pin_project! {
    /// Streams `inner` to the client unchanged while collecting a copy (as
    /// `Bytes` clones, no copying) up to `cap` bytes. Past the cap the copy is
    /// dropped and the stream goes on.
    pub(crate) struct Tee<B, S> {
        #[pin]
        inner: B,
        // Boxed: most responses are not collected, and bodies are moved.
        collecting: Option<Box<Collecting<S>>>,
    }
}

impl<B, S: Sink> Tee<B, S> {
    /// Collects `inner` into `sink`, up to `cap` bytes.
    pub(crate) fn new(inner: B, cap: usize, sink: S) -> Self
    where
        B: Body,
    {
        // hyper never polls a body that has ended before its first frame
        // (204, an empty 200): complete it now.
        if inner.is_end_stream() {
            sink.complete(Collected::default());
            return Self::passthrough(inner);
        }
        Self {
            inner,
            collecting: Some(Box::new(Collecting {
                chunks: Vec::new(),
                len: 0,
                cap,
                trailers: None,
                sink,
            })),
        }
    }

    /// Streams `inner` without collecting.
    pub(crate) fn passthrough(inner: B) -> Self {
        Self {
            inner,
            collecting: None,
        }
    }
}

impl<B, S> Body for Tee<B, S>
where
    B: Body<Data = Bytes>,
    S: Sink,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => finish(this.collecting),
            Some(Err(_)) => *this.collecting = None,
            Some(Ok(frame)) => {
                if let Some(c) = this.collecting.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        c.len += data.len();
                        if c.len > c.cap {
                            *this.collecting = None;
                        } else if !data.is_empty() {
                            c.chunks.push(data.clone());
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        c.trailers = Some(trailers.clone());
                    }
                }
                // hyper stops polling once a body says it has ended.
                if this.inner.is_end_stream() {
                    finish(this.collecting);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish<S: Sink>(collecting: &mut Option<Box<Collecting<S>>>) {
    if let Some(c) = collecting.take() {
        c.sink
            .complete(Collected::from_chunks(c.chunks, c.len, c.trailers));
    }
}

/// The outcome of [`collect_capped`].
pub(crate) enum Capped<B: Body> {
    /// The whole body, within the cap.
    Complete(Collected),
    /// The cap was passed (or the body failed): what was read, and the rest.
    Partial(Replay<B>),
}

impl<B: Body> std::fmt::Debug for Capped<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete(c) => f.debug_tuple("Complete").field(&c.data.len()).finish(),
            Self::Partial(_) => f.write_str("Partial"),
        }
    }
}

/// Reads `body` to its end if it fits in `cap` bytes. When it does not, or
/// fails, the bytes read so far and the rest of the body are returned as one
/// body that replays them, so nothing is lost.
pub(crate) async fn collect_capped<B>(body: B, cap: usize) -> Capped<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut chunks = Vec::new();
    let mut len = 0usize;
    let mut trailers = None;
    loop {
        if body.is_end_stream() {
            return Capped::Complete(Collected::from_chunks(chunks, len, trailers));
        }
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return Capped::Complete(Collected::from_chunks(chunks, len, trailers)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len();
                    chunks.push(data);
                    if len > cap {
                        return Capped::Partial(Replay::new(chunks, trailers, Ok(body)));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Some(Err(e)) => return Capped::Partial(Replay::new(chunks, trailers, Err(e))),
        }
    }
}

pin_project! {
    /// A body as a layer that may have read it hands it on: untouched, served
    /// from a buffered copy, or replayed from what was read and then resumed.
    #[project = ReplayableProj]
    pub(crate) enum Replayable<B: Body> {
        Untouched { #[pin] body: B },
        Buffered { #[pin] body: BufferedBody },
        Replayed { #[pin] body: Replay<B> },
    }
}

impl<B: Body> Replayable<B> {
    /// The variant's name, for `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Untouched { .. } => "Untouched",
            Self::Buffered { .. } => "Buffered",
            Self::Replayed { .. } => "Replayed",
        }
    }
}

impl<B> Body for Replayable<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            ReplayableProj::Untouched { body } => body.poll_frame(cx),
            ReplayableProj::Replayed { body } => body.poll_frame(cx),
            ReplayableProj::Buffered { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Untouched { body } => body.is_end_stream(),
            Self::Buffered { body } => body.is_end_stream(),
            Self::Replayed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Untouched { body } => body.size_hint(),
            Self::Buffered { body } => body.size_hint(),
            Self::Replayed { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// Replays chunks already read from a body, then the rest of it (or the
    /// error that interrupted it).
    pub(crate) struct Replay<B: Body> {
        prefix: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
        rest: Option<Result<Pin<Box<B>>, B::Error>>,
    }
}

impl<B: Body> Replay<B> {
    fn new(
        prefix: Vec<Bytes>,
        trailers: Option<HeaderMap>,
        rest: Result<Pin<Box<B>>, B::Error>,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            trailers,
            rest: Some(rest),
        }
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match this.rest {
            Some(Ok(body)) => body.as_mut().poll_frame(cx),
            Some(Err(_)) => match this.rest.take() {
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
                _ => Poll::Ready(None),
            },
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.trailers.is_none()
            && match &self.rest {
                Some(Ok(body)) => body.is_end_stream(),
                Some(Err(_)) => false,
                None => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Probe(Arc<Mutex<Option<Collected>>>);
    impl Sink for Probe {
        fn complete(self, collected: Collected) {
            *self.0.lock().unwrap() = Some(collected);
        }
    }

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_stream(frames))
    }

    fn futures_stream<T>(items: Vec<T>) -> impl futures::Stream<Item = T> {
        futures::stream::iter(items)
    }

    #[tokio::test]
    async fn tee_collects_within_cap_and_streams_everything() {
        let probe = Probe::default();
        let body = Tee::new(chunks(&["ab", "cd"]), 10, probe.clone());
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out, "abcd");
        assert_eq!(probe.0.lock().unwrap().as_ref().unwrap().data, "abcd");
    }

    #[tokio::test]
    async fn tee_abandons_past_cap_but_keeps_streaming() {
        let probe = Probe::default();
        let body = Tee::new(chunks(&["abc", "def", "ghi"]), 5, probe.clone());
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out, "abcdefghi");
        assert!(probe.0.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn tee_completes_on_end_stream_without_final_poll() {
        // Full says it has ended right after its only frame.
        let probe = Probe::default();
        let mut body = Tee::new(Full::new(Bytes::from_static(b"x")), 10, probe.clone());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        assert!(body.is_end_stream());
        assert_eq!(probe.0.lock().unwrap().as_ref().unwrap().data, "x");
    }

    #[test]
    fn tee_completes_a_body_that_ended_before_its_first_frame() {
        let probe = Probe::default();
        let body = Tee::new(http_body_util::Empty::<Bytes>::new(), 10, probe.clone());
        assert!(body.is_end_stream());
        assert_eq!(probe.0.lock().unwrap().as_ref().unwrap().data, "");
    }

    #[tokio::test]
    async fn collect_capped_complete_and_partial() {
        match collect_capped(chunks(&["ab", "cd"]), 4).await {
            Capped::Complete(c) => assert_eq!(c.data, "abcd"),
            other => panic!("{other:?}"),
        }
        match collect_capped(chunks(&["ab", "cd", "ef"]), 3).await {
            Capped::Partial(rest) => {
                assert_eq!(rest.collect().await.unwrap().to_bytes(), "abcdef")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn buffered_body_replays_data_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let c = Collected::from_chunks(
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            2,
            Some(trailers),
        );
        let out = c.body().collect().await.unwrap();
        assert_eq!(out.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(out.to_bytes(), "ab");
        assert!(BufferedBody::empty().is_end_stream());
        assert_eq!(BufferedBody::full("xyz").size_hint().exact(), Some(3));
    }
}
