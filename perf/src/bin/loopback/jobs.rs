//! The jobs: one workload each, and the table it prints.

use http::Uri;

use crate::load::Paths;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    /// Closed loop on `/trivial`: what a layer costs on the cheapest handler.
    Trivial,
    /// Closed loop on `/static/1k` (cacheable for 60 s).
    Hit1k,
    /// Closed loop on `/static/100k` (cacheable for 60 s).
    Hit100k,
    /// Closed loop on `/static/1k?v={n}`: a fresh key each time, so every
    /// response is a miss that a cache stores.
    Miss1k,
    /// Closed loop on `/db/hot`: every request the same slow query.
    HotKey,
    /// Open loop on `/db/{n}` (distinct keys) above the database's capacity.
    Overload,
}

impl Job {
    pub const ALL: &'static [Job] = &[
        Job::Trivial,
        Job::Hit1k,
        Job::Hit100k,
        Job::Miss1k,
        Job::HotKey,
        Job::Overload,
    ];

    /// The name used on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Job::Trivial => "trivial",
            Job::Hit1k => "hit-1k",
            Job::Hit100k => "hit-100k",
            Job::Miss1k => "miss-1k",
            Job::HotKey => "hot-key",
            Job::Overload => "overload",
        }
    }

    pub fn parse(key: &str) -> Option<Job> {
        Job::ALL.iter().copied().find(|job| job.key() == key)
    }

    pub fn title(self) -> &'static str {
        match self {
            Job::Trivial => "Overhead on a trivial handler (`GET /trivial`, closed loop)",
            Job::Hit1k => "Cache hit, 1 KiB body (`GET /static/1k`, closed loop)",
            Job::Hit100k => "Cache hit, 100 KiB body (`GET /static/100k`, closed loop)",
            Job::Miss1k => {
                "Cache miss that stores, 1 KiB body (`GET /static/1k?v={n}`, distinct keys, \
                 closed loop)"
            }
            Job::HotKey => "Hot key on the slow database (`GET /db/hot`, closed loop)",
            Job::Overload => "Overload (`GET /db/{n}`, distinct keys, open loop)",
        }
    }

    pub fn paths(self) -> Paths {
        let fixed = |p: &'static str| Paths::Fixed(Uri::from_static(p));
        match self {
            Job::Trivial => fixed("/trivial"),
            Job::Hit1k => fixed("/static/1k"),
            Job::Hit100k => fixed("/static/100k"),
            Job::Miss1k => Paths::Numbered("/static/1k?v="),
            Job::HotKey => fixed("/db/hot"),
            Job::Overload => Paths::Numbered("/db/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for &job in Job::ALL {
            assert_eq!(Job::parse(job.key()), Some(job));
        }
        assert_eq!(Job::parse("nope"), None);
    }
}
