//! The workload: which requests are sent, in what mix, with which key popularity, and the
//! load phases over a run. Shared by the backend (cost profile) and the load generator.

use std::time::Duration;

/// A small, fast, seedable PRNG (SplitMix64): the same seed replays the same workload in
/// every scenario, so scenarios differ only in the layers under test.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean: Poisson inter-arrival times.
    pub(crate) fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Log-normal multiplier with median 1: the jitter of a real query's service time.
    pub(crate) fn lognormal(&mut self, sigma: f64) -> f64 {
        // Box-Muller; `1 - unit()` is in (0, 1], so the logarithm is finite.
        let (u1, u2) = (1.0 - self.unit(), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (sigma * normal).exp()
    }
}

/// Zipf-distributed ranks `0..n`: rank 0 is the most popular key.
#[derive(Clone, Debug)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(exponent);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { cdf }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// The routes of the simulated backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /items/{id}`: cheap query, very skewed popularity, cacheable for 30 s.
    Item,
    /// `GET /search?q=`: slow query, a few hot terms, cacheable for 5 s.
    Search,
    /// `POST /orders`: a write; never cached or coalesced, only a limiter can protect it.
    Order,
}

impl Route {
    pub(crate) const ALL: [Route; 3] = [Route::Item, Route::Search, Route::Order];

    /// The route template, as a router (and a latency layer) labels it.
    pub(crate) fn template(self) -> &'static str {
        match self {
            Route::Item => "/items/{id}",
            Route::Search => "/search",
            Route::Order => "/orders",
        }
    }

    pub(crate) fn method(self) -> &'static str {
        match self {
            Route::Order => "POST",
            _ => "GET",
        }
    }

    /// Share of the traffic, in percent.
    pub(crate) fn share(self) -> u32 {
        match self {
            Route::Item => 65,
            Route::Search => 25,
            Route::Order => 10,
        }
    }

    /// Median database time of one call on an idle database.
    pub(crate) fn query_cost(self) -> Duration {
        match self {
            Route::Item => Duration::from_millis(6),
            Route::Search => Duration::from_millis(40),
            Route::Order => Duration::from_millis(12),
        }
    }

    pub(crate) fn cache_control(self) -> &'static str {
        match self {
            Route::Item => "public, max-age=30",
            Route::Search => "public, max-age=5",
            Route::Order => "no-store",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Number of distinct items and search terms, and how skewed their popularity is.
pub(crate) const ITEMS: usize = 5_000;
pub(crate) const ITEM_SKEW: f64 = 1.1;
pub(crate) const TERMS: usize = 200;
pub(crate) const TERM_SKEW: f64 = 1.2;

/// One request of the workload, ready to be sent.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) route: Route,
    /// Path and query.
    pub(crate) target: String,
}

/// Draws requests in the workload's mix and key popularity.
#[derive(Debug)]
pub(crate) struct Mix {
    items: Zipf,
    terms: Zipf,
}

impl Mix {
    pub(crate) fn new() -> Self {
        Self {
            items: Zipf::new(ITEMS, ITEM_SKEW),
            terms: Zipf::new(TERMS, TERM_SKEW),
        }
    }

    pub(crate) fn draw(&self, rng: &mut Rng) -> Call {
        let mut pick = (rng.unit() * 100.0) as u32;
        let route = *Route::ALL
            .iter()
            .find(|r| {
                let hit = pick < r.share();
                pick = pick.saturating_sub(r.share());
                hit
            })
            .unwrap_or(&Route::Item);
        let target = match route {
            Route::Item => format!("/items/{}", self.items.sample(rng)),
            Route::Search => format!("/search?q=term{}", self.terms.sample(rng)),
            Route::Order => "/orders".to_owned(),
        };
        Call { route, target }
    }
}

/// A stretch of a run at one offered rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    /// Where the phase ends, as a fraction of the run.
    pub(crate) until: f64,
    /// Offered rate as a multiple of the base rate.
    pub(crate) factor: f64,
}

/// The load profile of every scenario: steady, a spike well above what the database can
/// serve (something for a limiter to do), then steady again to see the recovery.
pub(crate) fn phases(spike: f64) -> [Phase; 3] {
    [
        Phase {
            name: "steady",
            until: 0.5,
            factor: 1.0,
        },
        Phase {
            name: "spike",
            until: 0.8,
            factor: spike,
        },
        Phase {
            name: "recovery",
            until: 1.0,
            factor: 1.0,
        },
    ]
}

/// Index of the phase in force at `fraction` of the run.
pub(crate) fn phase_at(phases: &[Phase], fraction: f64) -> usize {
    phases
        .iter()
        .position(|p| fraction < p.until)
        .unwrap_or(phases.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mean = (0..100_000).map(|_| a.unit()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mean = (0..100_000).map(|_| a.exponential(4.0)).sum::<f64>() / 100_000.0;
        assert!((mean - 4.0).abs() < 0.1, "{mean}");
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(1_000, 1.1);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        // With s = 1.1 over 1000 keys the top key draws about 16% of the requests.
        let top = f64::from(counts[0]) / 100_000.0;
        assert!((0.13..0.19).contains(&top), "{top}");
    }

    #[test]
    fn mix_follows_the_shares() {
        let (mix, mut rng) = (Mix::new(), Rng::new(3));
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[mix.draw(&mut rng).route.index()] += 1;
        }
        for route in Route::ALL {
            let share = f64::from(counts[route.index()]) / 200.0;
            assert!(
                (share - f64::from(route.share())).abs() < 1.5,
                "{route:?} {share}"
            );
        }
        assert_eq!(Route::ALL.iter().map(|r| r.share()).sum::<u32>(), 100);
    }

    #[test]
    fn phases_cover_the_run() {
        let p = phases(2.0);
        assert_eq!(phase_at(&p, 0.0), 0);
        assert_eq!(phase_at(&p, 0.6), 1);
        assert_eq!(phase_at(&p, 0.99), 2);
        assert_eq!(phase_at(&p, 1.0), 2);
    }
}
