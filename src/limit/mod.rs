//! Adaptive concurrency limit: finds how many requests the backend serves at
//! once without queueing, and sheds the rest at once.
//!
//! TODO-DOCS
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_perf::limit::AdaptiveLimitLayer;
//!
//! let limit = AdaptiveLimitLayer::new();
//! let handle = limit.handle();
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(limit);
//! assert_eq!(handle.in_flight(), 0);
//! ```

mod algorithm;
mod body;
mod classify;
mod controller;
mod future;
mod handle;
mod layer;
mod partition;
mod service;
mod window;

pub use algorithm::{Aimd, Algorithm, Gradient2, Sample, Vegas};
pub use body::ResponseBody;
pub use classify::{Classify, DefaultClassifier, Outcome};
pub use controller::Queue;
pub use future::ResponseFuture;
pub use handle::{Counters, LimitHandle};
pub use layer::AdaptiveLimitLayer;
pub use service::AdaptiveLimit;
pub use window::Window;

/// The algorithm [`AdaptiveLimitLayer::new`] uses.
pub type DefaultAlgorithm = Vegas;
