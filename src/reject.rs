//! Overload responses, shared by the layers that shed load.
//!
//! An HTTP request gets `503 Service Unavailable` with `Retry-After`; a gRPC
//! request (`content-type: application/grpc*`) gets a trailers-only gRPC
//! response: HTTP 200, `grpc-status: 14` (`UNAVAILABLE`) and `grpc-message`,
//! which every gRPC client maps to a retryable status.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use crate::route;

/// `grpc-status` for `UNAVAILABLE`.
const GRPC_UNAVAILABLE: HeaderValue = HeaderValue::from_static("14");

/// The response for a request shed because the service is overloaded.
///
/// `message` goes into the HTTP body or, for gRPC, into `grpc-message`; it
/// must be printable ASCII (gRPC sends it unencoded).
pub(crate) fn overloaded<B>(
    req: &Request<B>,
    retry_after: &HeaderValue,
    message: &'static str,
) -> Response<Full<Bytes>> {
    let grpc = route::is_grpc(req);
    let mut res = Response::new(Full::new(if grpc {
        Bytes::new()
    } else {
        Bytes::from_static(message.as_bytes())
    }));
    if !grpc {
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    let headers = res.headers_mut();
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", GRPC_UNAVAILABLE);
        headers.insert("grpc-message", HeaderValue::from_static(message));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::RETRY_AFTER, retry_after.clone());
    }
    res
}

/// A `Retry-After` value in whole seconds, rounded up.
pub(crate) fn retry_after(after: std::time::Duration) -> HeaderValue {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn http_and_grpc() {
        let ra = retry_after(Duration::from_millis(1500));
        assert_eq!(ra, "2");
        assert_eq!(retry_after(Duration::ZERO), "0");

        let req = Request::get("/").body(()).unwrap();
        let res = overloaded(&req, &ra, "overloaded");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "overloaded");

        let req = Request::post("/pkg.Svc/Get")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        let res = overloaded(&req, &ra, "overloaded");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["grpc-message"], "overloaded");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        assert!(res
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
}
