use http::{HeaderMap, HeaderName, StatusCode};

/// How a finished request counts for the limit algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend served the request: its RTT is a sample.
    Success,
    /// The backend was overloaded or failed: a drop signal, its RTT is not
    /// used.
    Drop,
    /// Not a sample at all (the request tells nothing about the backend).
    Ignore,
}

/// Classifies responses into [`Outcome`]s.
///
/// Implemented by [`DefaultClassifier`] and by every
/// `Fn(StatusCode, &HeaderMap) -> Outcome` closure (which keep the default
/// gRPC trailer rule). Service errors are always drops and cancelled requests
/// (the response future or body dropped early) are always ignored.
pub trait Classify: Clone + Send + Sync + 'static {
    /// Classifies a response from its head.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome;

    /// Classifies a response's trailers, when it has any; a result other
    /// than [`Outcome::Success`] replaces the head's outcome. The default
    /// reads `grpc-status` like [`DefaultClassifier`].
    fn classify_trailers(&self, trailers: &HeaderMap) -> Outcome {
        grpc_outcome(trailers).unwrap_or(Outcome::Success)
    }
}

/// The default classification.
///
/// | response | outcome |
/// |---|---|
/// | 5xx, 429 | drop |
/// | `grpc-status` 4 (`DEADLINE_EXCEEDED`), 8 (`RESOURCE_EXHAUSTED`), 14 (`UNAVAILABLE`), in headers or trailers | drop |
/// | anything else (2xx, 3xx, 4xx, other gRPC statuses) | success |
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Outcome::Drop
        } else {
            grpc_outcome(headers).unwrap_or(Outcome::Success)
        }
    }
}

impl<F> Classify for F
where
    F: Fn(StatusCode, &HeaderMap) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        self(status, headers)
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The outcome a `grpc-status` header says, if there is one.
fn grpc_outcome(headers: &HeaderMap) -> Option<Outcome> {
    let status = headers.get(GRPC_STATUS)?;
    Some(match status.as_bytes() {
        b"4" | b"8" | b"14" => Outcome::Drop,
        _ => Outcome::Success,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules() {
        let c = DefaultClassifier;
        let none = HeaderMap::new();
        for (status, outcome) in [
            (200, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Drop),
            (500, Outcome::Drop),
            (503, Outcome::Drop),
            (504, Outcome::Drop),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(c.classify_response(status, &none), outcome, "{status}");
        }
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(c.classify_response(StatusCode::OK, &grpc), Outcome::Drop);
        assert_eq!(c.classify_trailers(&grpc), Outcome::Drop);
        grpc.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(c.classify_trailers(&grpc), Outcome::Success);
        assert_eq!(c.classify_trailers(&none), Outcome::Success);

        let all_fine = |_: StatusCode, _: &HeaderMap| Outcome::Success;
        assert_eq!(
            all_fine.classify_response(StatusCode::BAD_GATEWAY, &none),
            Outcome::Success
        );
    }
}
