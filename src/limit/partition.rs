use std::{fmt, sync::Arc};

use http::{HeaderName, Request};

use crate::{key::RequestHead, route};

type PartitionFn = dyn Fn(&RequestHead<'_>) -> Option<&'static str> + Send + Sync;

/// What names a request's partition.
#[derive(Clone)]
pub(crate) enum PartitionBy {
    Header(HeaderName),
    Route,
    Fn(Arc<PartitionFn>),
}

impl fmt::Debug for PartitionBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Route => f.write_str("Route"),
            Self::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// Named partitions with guaranteed shares of the limit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Partitions {
    by: Option<PartitionBy>,
    shares: Vec<(Box<str>, f64)>,
}

impl Partitions {
    pub(crate) fn set_by(&mut self, by: PartitionBy) {
        self.by = Some(by);
    }

    /// Adds (or updates) a partition; a share is clamped to `[0, 1]`.
    pub(crate) fn add(&mut self, name: &str, share: f64) {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.shares.iter_mut().find(|(n, _)| &**n == name) {
            Some(entry) => entry.1 = share,
            None => self.shares.push((name.into(), share)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shares.len()
    }

    /// The guaranteed in-flight count of partition `index` under `limit`:
    /// `ceil(share × limit)`, at least 1 for a non-zero share.
    pub(crate) fn guaranteed(&self, index: usize, limit: usize) -> usize {
        (self.shares[index].1 * limit as f64).ceil() as usize
    }

    /// The partition a request belongs to, if any.
    pub(crate) fn classify<B>(&self, req: &Request<B>) -> Option<usize> {
        let name = match self.by.as_ref()? {
            PartitionBy::Header(header) => req.headers().get(header)?.as_bytes(),
            PartitionBy::Route => route::matched_path(req)
                .or_else(|| route::grpc_method(req))
                .unwrap_or_else(|| req.uri().path())
                .as_bytes(),
            PartitionBy::Fn(f) => f(&RequestHead::from_request(req))?.as_bytes(),
        };
        self.shares.iter().position(|(n, _)| n.as_bytes() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(by: PartitionBy) -> Partitions {
        let mut p = Partitions::default();
        p.set_by(by);
        p.add("live", 0.9);
        p.add("batch", 0.1);
        p.add("batch", 0.2);
        p.add("nan", f64::NAN);
        p
    }

    #[test]
    fn classifies() {
        let p = partitions(PartitionBy::Header(HeaderName::from_static("x-class")));
        let req = |class: &str| Request::get("/").header("x-class", class).body(()).unwrap();
        assert_eq!(p.classify(&req("batch")), Some(1));
        assert_eq!(p.classify(&req("other")), None);
        assert_eq!(p.classify(&Request::new(())), None);
        assert_eq!(
            (
                p.guaranteed(0, 10),
                p.guaranteed(1, 10),
                p.guaranteed(2, 10)
            ),
            (9, 2, 0)
        );

        let mut p = partitions(PartitionBy::Route);
        p.add("/pkg.Svc/Live", 0.5);
        let grpc = Request::post("/pkg.Svc/Live")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert_eq!(p.classify(&grpc), Some(3));
        assert_eq!(p.classify(&Request::get("/live").body(()).unwrap()), None);
        let p = partitions(PartitionBy::Fn(Arc::new(|head: &RequestHead<'_>| {
            head.uri.path().starts_with("/jobs").then_some("batch")
        })));
        assert_eq!(
            p.classify(&Request::get("/jobs/1").body(7).unwrap()),
            Some(1)
        );
        assert_eq!(p.classify(&Request::get("/").body(7).unwrap()), None);
    }
}
