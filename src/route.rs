//! Route labels: the low-cardinality name of the route a request took, never
//! its raw path.

use http::{header::CONTENT_TYPE, Request};

/// The label given to requests that matched no route.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The route template axum matched (`/users/{id}`), when the layer runs inside
/// a `Router` and the `axum` feature is on.
pub(crate) fn matched_path<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| p.as_str())
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = req;
        None
    }
}

/// The gRPC method path `/package.Service/Method`, when the request is gRPC
/// and its path has that shape.
pub(crate) fn grpc_method<B>(req: &Request<B>) -> Option<&str> {
    if !is_grpc(req) {
        return None;
    }
    let path = req.uri().path();
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains('/');
    (valid(service) && valid(method)).then_some(path)
}

// Public through `tower_perf::latency`; gated so `limit` alone has no
// unreachable public items.
#[cfg(feature = "latency")]
pub use self::user::{NoRoute, RouteFn};

#[cfg(feature = "latency")]
mod user {
    use http::Request;

    /// Names the route of a request that has no axum `MatchedPath` and is not
    /// gRPC: a user-supplied mapping from request to a low-cardinality label.
    ///
    /// Implemented for closures `Fn(&Request<B>) -> Option<R>` where `R: AsRef<str>`
    /// (`&'static str`, `String`, ...). Return `None` for requests that match no
    /// route; they share one fixed label. Never return the raw path: every
    /// distinct value is a new series (a cap bounds them, but the overflow
    /// series tells you nothing).
    pub trait RouteFn<B> {
        /// The label.
        type Route: AsRef<str>;

        /// The route label of `req`, or `None` when it matched no route.
        fn route(&self, req: &Request<B>) -> Option<Self::Route>;
    }

    impl<B, F, R> RouteFn<B> for F
    where
        F: Fn(&Request<B>) -> Option<R>,
        R: AsRef<str>,
    {
        type Route = R;

        fn route(&self, req: &Request<B>) -> Option<R> {
            self(req)
        }
    }

    /// The default [`RouteFn`]: no user routes, so requests without a
    /// `MatchedPath` or a gRPC method are unmatched.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct NoRoute;

    impl<B> RouteFn<B> for NoRoute {
        type Route = &'static str;

        fn route(&self, _: &Request<B>) -> Option<&'static str> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths() {
        let req = |path: &str, ct: &str| {
            Request::post(path)
                .header("content-type", ct)
                .body(())
                .unwrap()
        };
        let r = req("/pkg.Svc/Get", "application/grpc+proto");
        assert_eq!(grpc_method(&r), Some("/pkg.Svc/Get"));
        assert_eq!(grpc_method(&req("/pkg.Svc/Get", "application/json")), None);
        assert_eq!(grpc_method(&req("/a/b/c", "application/grpc")), None);
        assert_eq!(grpc_method(&req("/a", "application/grpc")), None);
        assert_eq!(matched_path(&r), None);
    }
}
