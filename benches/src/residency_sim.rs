//! Replays a request trace over many models against a memory capacity and counts hits (the model was
//! resident) under three eviction policies: Accel's (`accel::residency::policy`, the code the server
//! runs), LRU, and Belady's rule (evict the model needed furthest in the future), computed offline on
//! the same trace. With models of one size Belady's rule is the optimum; with sizes it is the classic
//! offline reference rather than a proven optimum.

use std::collections::{BTreeSet, HashMap};

use accel::residency::policy::{Candidate, Usage, choose_victims};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

/// The models and the requests for them.
#[derive(Debug, Clone)]
pub struct Trace {
    pub sizes: Vec<u64>,
    /// Seconds a load from the files takes (the reload cost Accel's policy weighs).
    pub load_secs: Vec<f64>,
    /// Model index of each request.
    pub requests: Vec<usize>,
    /// Seconds between requests (Accel's policy ages hits on this clock).
    pub gap_secs: f64,
}

impl Trace {
    /// `models` models whose sizes spread `spread`× (log-uniform), a load time of 5 ms + 1 ms per MB,
    /// and `n` requests with Zipf(`s`) popularity over a random order of the models.
    pub fn zipf(models: usize, spread: f64, s: f64, n: usize, seed: u64) -> Trace {
        let mut rng = StdRng::seed_from_u64(seed);
        let sizes: Vec<u64> = (0..models)
            .map(|k| {
                let f = if models > 1 {
                    k as f64 / (models - 1) as f64
                } else {
                    0.0
                };
                (1_000_000.0 * spread.powf(f)) as u64
            })
            .collect();
        let mut order: Vec<usize> = (0..models).collect();
        order.shuffle(&mut rng);
        let load_secs = sizes.iter().map(|&b| 0.005 + b as f64 / 1e9).collect();
        let zipf = Zipf::new(models as f64, s).ok();
        let requests = (0..n)
            .map(|_| match &zipf {
                Some(z) => order[(z.sample(&mut rng) as usize).clamp(1, models) - 1],
                None => order[0],
            })
            .collect();
        Trace {
            sizes,
            load_secs,
            requests,
            gap_secs: 0.01,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

/// What one policy achieved on a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub policy: &'static str,
    pub hits: usize,
    pub requests: usize,
    /// Seconds spent loading models on misses.
    pub load_secs: f64,
}

impl Outcome {
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }
}

/// Accel's policy: on a miss, evict by `choose_victims` until the model fits.
pub fn accel(trace: &Trace, capacity: u64) -> Outcome {
    let n = trace.sizes.len();
    let mut usage = vec![Usage::default(); n];
    let mut resident = vec![false; n];
    let mut used = 0u64;
    let mut out = outcome("Accel (value = decayed hits x reload time / size)", trace);
    for (t, &m) in trace.requests.iter().enumerate() {
        let now = t as f64 * trace.gap_secs;
        if resident[m] {
            out.hits += 1;
        } else if trace.sizes[m] <= capacity {
            out.load_secs += trace.load_secs[m];
            let need = (used + trace.sizes[m]).saturating_sub(capacity);
            let ids: Vec<usize> = (0..n).filter(|&k| resident[k]).collect();
            let candidates: Vec<Candidate> = ids
                .iter()
                .map(|&k| Candidate {
                    bytes: trace.sizes[k],
                    usage: usage[k],
                    reload_secs: trace.load_secs[k],
                })
                .collect();
            for i in choose_victims(&candidates, need, now).unwrap_or_default() {
                resident[ids[i]] = false;
                used -= trace.sizes[ids[i]];
            }
            resident[m] = true;
            used += trace.sizes[m];
        } else {
            out.load_secs += trace.load_secs[m];
        }
        usage[m].hit(now);
    }
    out
}

/// Least recently used first.
pub fn lru(trace: &Trace, capacity: u64) -> Outcome {
    let mut last = HashMap::new();
    let mut used = 0u64;
    let mut out = outcome("LRU", trace);
    for (t, &m) in trace.requests.iter().enumerate() {
        if last.contains_key(&m) {
            out.hits += 1;
        } else {
            out.load_secs += trace.load_secs[m];
            if trace.sizes[m] <= capacity {
                while used + trace.sizes[m] > capacity {
                    let (&oldest, _) = last.iter().min_by_key(|&(_, t)| *t).expect("something is resident");
                    last.remove(&oldest);
                    used -= trace.sizes[oldest];
                }
                used += trace.sizes[m];
            }
        }
        if trace.sizes[m] <= capacity {
            last.insert(m, t);
        }
    }
    out
}

/// Belady's rule: evict the resident model whose next request is furthest away (never requested
/// again first).
pub fn belady(trace: &Trace, capacity: u64) -> Outcome {
    let len = trace.requests.len();
    // next[t]: the index of the next request for the same model after t (len: never).
    let mut next = vec![len; len];
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for t in (0..len).rev() {
        let m = trace.requests[t];
        next[t] = seen.get(&m).copied().unwrap_or(len);
        seen.insert(m, t);
    }
    // Resident models ordered by their next use: (next use, model).
    let mut by_next: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut next_of: HashMap<usize, usize> = HashMap::new();
    let mut used = 0u64;
    let mut out = outcome("Belady (offline)", trace);
    for (t, &m) in trace.requests.iter().enumerate() {
        if let Some(n) = next_of.remove(&m) {
            out.hits += 1;
            by_next.remove(&(n, m));
        } else {
            out.load_secs += trace.load_secs[m];
            if trace.sizes[m] > capacity {
                continue;
            }
            while used + trace.sizes[m] > capacity {
                let Some(&(n, victim)) = by_next.iter().next_back() else {
                    break;
                };
                by_next.remove(&(n, victim));
                next_of.remove(&victim);
                used -= trace.sizes[victim];
            }
            used += trace.sizes[m];
        }
        by_next.insert((next[t], m));
        next_of.insert(m, next[t]);
    }
    out
}

fn outcome(policy: &'static str, trace: &Trace) -> Outcome {
    Outcome {
        policy,
        hits: 0,
        requests: trace.requests.len(),
        load_secs: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(sizes: &[u64], requests: &[usize]) -> Trace {
        Trace {
            sizes: sizes.to_vec(),
            load_secs: sizes.iter().map(|&b| b as f64).collect(),
            requests: requests.to_vec(),
            gap_secs: 1.0,
        }
    }

    #[test]
    fn belady_is_optimal_on_a_textbook_trace() {
        // Capacity for 3 of 4 equal models; the classic sequence: Belady misses 3 + 2 = 5 times.
        let t = trace(&[1, 1, 1, 1, 1], &[0, 1, 2, 3, 0, 1, 4, 0, 1, 2, 3, 4]);
        let b = belady(&t, 3);
        assert_eq!(b.requests - b.hits, 7);
        let l = lru(&t, 3);
        assert_eq!(l.requests - l.hits, 10);
        assert!(accel(&t, 3).hits <= b.hits);
    }

    #[test]
    fn everything_fits_means_only_cold_misses() {
        let t = trace(&[2, 3, 4], &[0, 1, 2, 0, 1, 2, 2, 1]);
        for o in [accel(&t, 9), lru(&t, 9), belady(&t, 9)] {
            assert_eq!(o.hits, 5, "{}", o.policy);
            assert_eq!(o.load_secs, 9.0, "{}", o.policy);
        }
    }

    #[test]
    fn a_model_larger_than_the_capacity_always_misses() {
        let t = trace(&[10, 1], &[0, 0, 1, 1]);
        for o in [accel(&t, 5), lru(&t, 5), belady(&t, 5)] {
            assert_eq!(o.hits, 1, "{}", o.policy);
        }
    }

    #[test]
    fn zipf_traces_favour_frequency_over_recency() {
        let t = Trace::zipf(100, 30.0, 1.1, 20_000, 7);
        let cap = t.total_bytes() / 5;
        let (a, l, b) = (accel(&t, cap), lru(&t, cap), belady(&t, cap));
        assert!(b.hit_rate() >= a.hit_rate() && b.hit_rate() >= l.hit_rate());
        assert!(a.hit_rate() > l.hit_rate(), "{} vs {}", a.hit_rate(), l.hit_rate());
    }
}
