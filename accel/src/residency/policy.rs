//! Which models to evict when a load needs memory: a pure function of the candidates, so that the
//! server and the offline simulator (`accel-bench residency-sim`, which compares it with LRU and
//! Belady's rule on a trace) run the same code.
//!
//! A model's value is what keeping it saves per byte it holds: its recent demand (hits with an
//! exponential age decay) times what bringing it back would cost (its measured reload time), divided
//! by its size. The cheapest bytes go first, so a large model that is rarely used and quick to reload
//! leaves before a small hot one that is slow to load (GreedyDual-Size's idea, with measured costs).
//! Busy and pinned models are never candidates: the caller leaves them out.

/// Demand for one model: hits, each worth less as it ages (half-life [`HALF_LIFE_SECS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    hits: f64,
    /// When `hits` was last brought up to date, in seconds on the caller's clock.
    at: f64,
    /// The last hit, on the same clock.
    pub last: f64,
}

/// Half-life of a hit's weight.
pub const HALF_LIFE_SECS: f64 = 60.0;

impl Usage {
    /// Records one hit at `now`.
    pub fn hit(&mut self, now: f64) {
        self.hits = self.decayed(now) + 1.0;
        self.at = now;
        self.last = now;
    }

    /// The hits as they weigh at `now`.
    pub fn decayed(&self, now: f64) -> f64 {
        let age = (now - self.at).max(0.0);
        self.hits * (-age * std::f64::consts::LN_2 / HALF_LIFE_SECS).exp()
    }
}

/// A model that could be evicted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub bytes: u64,
    pub usage: Usage,
    /// Seconds it would take to make the model resident again.
    pub reload_secs: f64,
}

impl Candidate {
    /// What keeping the model is worth per byte, at `now`.
    pub fn value(&self, now: f64) -> f64 {
        self.usage.decayed(now) * self.reload_secs.max(1e-6) / self.bytes.max(1) as f64
    }
}

/// The candidates to evict, cheapest first, so that at least `need` bytes come back; `None` when even
/// all of them would not free enough (then nothing should be evicted).
pub fn choose_victims(candidates: &[Candidate], need: u64, now: f64) -> Option<Vec<usize>> {
    if need == 0 {
        return Some(Vec::new());
    }
    let total: u64 = candidates.iter().map(|c| c.bytes).sum();
    if total < need {
        return None;
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        ca.value(now)
            .total_cmp(&cb.value(now))
            .then(ca.usage.last.total_cmp(&cb.usage.last))
            .then(cb.bytes.cmp(&ca.bytes))
    });
    let mut freed = 0u64;
    let mut victims = Vec::new();
    for i in order {
        if freed >= need {
            break;
        }
        freed += candidates[i].bytes;
        victims.push(i);
    }
    Some(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(bytes: u64, hits: &[f64], reload_secs: f64) -> Candidate {
        let mut usage = Usage::default();
        for &t in hits {
            usage.hit(t);
        }
        Candidate {
            bytes,
            usage,
            reload_secs,
        }
    }

    #[test]
    fn hits_lose_half_their_weight_every_half_life() {
        let mut u = Usage::default();
        u.hit(0.0);
        u.hit(0.0);
        assert!((u.decayed(HALF_LIFE_SECS) - 1.0).abs() < 1e-9);
        assert!((u.decayed(2.0 * HALF_LIFE_SECS) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_cheapest_bytes_go_first() {
        let now = 10.0;
        let hot: Vec<f64> = (0..20).map(|i| i as f64 / 4.0).collect();
        let cands = [
            candidate(100, &hot, 1.0),    // hot
            candidate(100, &[1.0], 1.0),  // cold
            candidate(100, &[1.0], 10.0), // cold but slow to reload
        ];
        assert_eq!(choose_victims(&cands, 50, now), Some(vec![1]));
        assert_eq!(choose_victims(&cands, 150, now), Some(vec![1, 2]));
        assert_eq!(choose_victims(&cands, 300, now), Some(vec![1, 2, 0]));
        assert_eq!(choose_victims(&cands, 301, now), None);
        assert_eq!(choose_victims(&cands, 0, now), Some(vec![]));
    }

    #[test]
    fn size_counts_against_a_model_and_age_makes_hits_fade() {
        let now = 1000.0;
        // Same demand and reload time: the larger one holds more bytes for the same value.
        let cands = [candidate(10, &[999.0], 1.0), candidate(1000, &[999.0], 1.0)];
        assert_eq!(choose_victims(&cands, 5, now), Some(vec![1]));
        // Many old hits weigh less than a few recent ones.
        let old: Vec<f64> = (0..20).map(|i| i as f64).collect();
        let cands = [candidate(10, &old, 1.0), candidate(10, &[998.0, 999.0], 1.0)];
        assert_eq!(choose_victims(&cands, 5, now), Some(vec![0]));
    }
}
