//! Metric names and the OpenTelemetry attribute values the layer emits.
//!
//! Every label value comes from a closed set (or from a route the registry
//! admitted under its cap), so no label is built from raw request input.

use http::{Method, StatusCode};
use metrics::{Label, SharedString};

/// The OpenTelemetry recommended bucket boundaries for
/// `http.server.request.duration`, in seconds.
///
/// Pass them to your exporter, for example
/// `PrometheusBuilder::set_buckets_for_metric`. The library never installs a
/// recorder nor chooses buckets itself.
pub const OTEL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// How the layer spells its metric and attribute names.
///
/// Both spellings carry the same data; pick the one your exporter expects.
///
/// | | [`Naming::OpenTelemetry`] (default) | [`Naming::Prometheus`] |
/// |---|---|---|
/// | histogram (seconds) | `http.server.request.duration` | `http_server_request_duration_seconds` |
/// | gauge | `http.server.active_requests` | `http_server_active_requests` |
/// | method | `http.request.method` | `http_request_method` |
/// | route | `http.route` | `http_route` |
/// | status | `http.response.status_code` | `http_response_status_code` |
/// | failure | `error.type` | `error_type` |
/// | gRPC status | `rpc.grpc.status_code` | `rpc_grpc_status_code` |
/// | overflow | `otel.metric.overflow` | `otel_metric_overflow` |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Naming {
    /// OpenTelemetry semantic-convention names, for OTel bridges and for
    /// recorders that sanitise names themselves.
    #[default]
    OpenTelemetry,
    /// Prometheus-style names with the unit suffix, for
    /// `metrics-exporter-prometheus` users.
    Prometheus,
}

/// The names one [`Naming`] uses.
#[derive(Debug)]
pub(crate) struct Names {
    pub(crate) duration: &'static str,
    pub(crate) active: &'static str,
    pub(crate) method: &'static str,
    pub(crate) route: &'static str,
    pub(crate) status: &'static str,
    pub(crate) error: &'static str,
    pub(crate) grpc_status: &'static str,
    pub(crate) overflow: &'static str,
}

impl Naming {
    pub(crate) fn names(self) -> &'static Names {
        match self {
            Naming::OpenTelemetry => &Names {
                duration: "http.server.request.duration",
                active: "http.server.active_requests",
                method: "http.request.method",
                route: "http.route",
                status: "http.response.status_code",
                error: "error.type",
                grpc_status: "rpc.grpc.status_code",
                overflow: "otel.metric.overflow",
            },
            Naming::Prometheus => &Names {
                duration: "http_server_request_duration_seconds",
                active: "http_server_active_requests",
                method: "http_request_method",
                route: "http_route",
                status: "http_response_status_code",
                error: "error_type",
                grpc_status: "rpc_grpc_status_code",
                overflow: "otel_metric_overflow",
            },
        }
    }
}

/// The methods OpenTelemetry names as is; everything else is `_OTHER`.
pub(crate) const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
];

/// Index into [`METHODS`], without allocating for extension methods.
pub(crate) fn method_index(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// gRPC status code names, by code.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC `UNIMPLEMENTED`: the method does not exist, so the route collapses.
pub(crate) const GRPC_UNIMPLEMENTED: u8 = 12;
/// A `grpc-status` outside 0..=16.
const GRPC_UNKNOWN_CODE: u8 = 17;

/// Parses a `grpc-status` value; anything malformed is an unknown code.
pub(crate) fn grpc_code(value: &http::HeaderValue) -> u8 {
    let bytes = value.as_bytes();
    match bytes {
        [d] if d.is_ascii_digit() => d - b'0',
        [b'1', d] if (b'0'..=b'6').contains(d) => 10 + (d - b'0'),
        _ => GRPC_UNKNOWN_CODE,
    }
}

/// Server-side gRPC failures per the OpenTelemetry RPC conventions.
fn grpc_is_server_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15) || code == GRPC_UNKNOWN_CODE
}

/// Why a request failed, when it did (`error.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The inner service returned an error.
    Service,
    /// The inner service returned an error that is a timeout.
    Timeout,
    /// The response future or body was dropped before the response ended.
    Cancelled,
    /// The response body yielded an error.
    Body,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Service => "_OTHER",
            Failure::Timeout => "timeout",
            Failure::Cancelled => "cancelled",
            Failure::Body => "body_error",
        }
    }
}

/// The `error.type` of an error from the inner service: `timeout` for
/// `tokio::time` and `tower::timeout` elapsed errors and timed-out I/O
/// errors (also inside a `BoxError`'s source chain), else `_OTHER`.
pub(crate) fn classify_error<E: 'static>(error: &E) -> Failure {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let any: &dyn std::any::Any = error;
    let root: &(dyn std::error::Error + 'static) = if let Some(e) = any.downcast_ref::<BoxError>() {
        &**e
    } else if let Some(e) = any.downcast_ref::<std::io::Error>() {
        e
    } else if let Some(e) = any.downcast_ref::<tokio::time::error::Elapsed>() {
        e
    } else {
        return Failure::Service;
    };
    let mut next = Some(root);
    while let Some(e) = next {
        let io_timeout = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        // tower's `Elapsed` is matched by its message: the library does not depend on tower.
        if io_timeout
            || e.is::<tokio::time::error::Elapsed>()
            || displays_as(e, "request timed out")
        {
            return Failure::Timeout;
        }
        next = e.source();
    }
    Failure::Service
}

/// Whether `value` displays exactly as `expected`, without allocating.
fn displays_as(value: &dyn std::fmt::Display, expected: &str) -> bool {
    struct Compare<'a>(&'a str);
    impl std::fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match self.0.strip_prefix(s) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(())
                }
                None => Err(std::fmt::Error),
            }
        }
    }
    let mut compare = Compare(expected);
    std::fmt::write(&mut compare, format_args!("{value}")).is_ok() && compare.0.is_empty()
}

/// One label set within a route: everything but the route itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeriesKey {
    pub(crate) method: u8,
    /// The response status, if headers were produced.
    pub(crate) status: Option<StatusCode>,
    /// The gRPC status code, for gRPC requests that got one.
    pub(crate) grpc: Option<u8>,
    pub(crate) failure: Option<Failure>,
}

impl SeriesKey {
    /// The `error.type` value, if the request failed.
    pub(crate) fn error_type(&self) -> Option<SharedString> {
        if let Some(failure) = self.failure {
            return Some(SharedString::const_str(failure.as_str()));
        }
        if let Some(status) = self.status.filter(StatusCode::is_server_error) {
            return Some(SharedString::from(status.as_str().to_owned()));
        }
        match self.grpc {
            Some(code) if grpc_is_server_error(code) => Some(SharedString::const_str(
                GRPC_CODES
                    .get(usize::from(code))
                    .copied()
                    .unwrap_or("_OTHER"),
            )),
            _ => None,
        }
    }

    /// The label set of this series on `route`. Built once per series.
    pub(crate) fn labels(&self, names: &Names, route: SharedString) -> Vec<Label> {
        let mut labels = Vec::with_capacity(5);
        labels.push(Label::new(
            names.method,
            SharedString::const_str(METHODS[usize::from(self.method)]),
        ));
        labels.push(Label::new(names.route, route));
        if let Some(status) = self.status {
            labels.push(Label::new(names.status, status.as_str().to_owned()));
        }
        if let Some(code) = self.grpc {
            labels.push(Label::new(names.grpc_status, code.to_string()));
        }
        if let Some(error) = self.error_type() {
            labels.push(Label::new(names.error, error));
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn methods() {
        assert_eq!(METHODS[usize::from(method_index(&Method::GET))], "GET");
        assert_eq!(METHODS[usize::from(method_index(&Method::TRACE))], "TRACE");
        let brew = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(METHODS[usize::from(method_index(&brew))], "_OTHER");
    }

    #[test]
    fn grpc_codes() {
        let code = |s: &'static str| grpc_code(&HeaderValue::from_static(s));
        assert_eq!(code("0"), 0);
        assert_eq!(code("12"), 12);
        assert_eq!(code("16"), 16);
        for bad in ["17", "99", "", "-1", "1 ", "abc", "007"] {
            assert_eq!(code(bad), GRPC_UNKNOWN_CODE, "{bad:?}");
        }
    }

    #[test]
    fn timeouts() {
        type BoxError = Box<dyn std::error::Error + Send + Sync>;
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(classify_error(&io), Failure::Timeout);
        let boxed: BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "x"));
        assert_eq!(classify_error(&boxed), Failure::Timeout);
        let tower: BoxError = tower::timeout::error::Elapsed::new().into();
        assert_eq!(classify_error(&tower), Failure::Timeout);
        let other: BoxError = "request timed out!".into();
        assert_eq!(classify_error(&other), Failure::Service);
        assert_eq!(classify_error(&"nope"), Failure::Service);
        assert_eq!(
            classify_error(&std::io::Error::other("x")),
            Failure::Service
        );
    }

    #[test]
    fn error_type() {
        let key = |status: u16, grpc, failure| SeriesKey {
            method: 0,
            status: Some(StatusCode::from_u16(status).unwrap()),
            grpc,
            failure,
        };
        assert_eq!(key(200, None, None).error_type(), None);
        assert_eq!(key(404, None, None).error_type(), None);
        assert_eq!(key(503, None, None).error_type().as_deref(), Some("503"));
        let grpc = |code| key(200, Some(code), None).error_type();
        assert_eq!(grpc(5), None);
        assert_eq!(grpc(13).as_deref(), Some("INTERNAL"));
        assert_eq!(grpc(GRPC_UNKNOWN_CODE).as_deref(), Some("_OTHER"));
        let cancelled = key(500, None, Some(Failure::Cancelled)).error_type();
        assert_eq!(cancelled.as_deref(), Some("cancelled"));
    }
}
