//! Traffic split between the versions of one model (config parameter `accel.version_weights`,
//! e.g. `"1:90,2:10"`): a request that names no version goes to a version drawn by weight. A
//! routing key (request parameter `accel.routing_key`, or the `accel-routing-key` header / gRPC
//! metadata) makes the draw deterministic, so one user stays on one version, whichever way the
//! key is sent. A version at weight 0 is loaded but gets only requests that name it.
//!
//! Each version owns a range of `[0, total)` in ascending version order; a request's point falls in
//! one. A key's point is a hash of its bytes; without a key the points follow a Weyl sequence, so
//! the shares are met closely even over a few requests. When weights change, only the keys in the
//! part of the line that changed hands move.

use std::sync::atomic::{AtomicU64, Ordering};

use accel_proto::inference::ModelConfig;

/// The config parameter of the split.
pub const VERSION_WEIGHTS: &str = "accel.version_weights";

/// The HTTP header and gRPC metadata key that carries a routing key.
pub const ROUTING_KEY_HEADER: &str = "accel-routing-key";

/// The most a routing key may be, in bytes.
pub const MAX_ROUTING_KEY: usize = 1024;

/// The largest weight one version may have.
const MAX_WEIGHT: u64 = 1_000_000;

/// The weights of one model's versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// (version, weight), ascending by version; every served version appears (weight 0 if unnamed).
    weights: Vec<(u64, u64)>,
    total: u64,
    /// The text it was parsed from, as the config reports it.
    text: String,
}

impl Split {
    /// The split a config asks for, over the versions the model serves; `None` without the
    /// parameter.
    pub fn of_config(config: &ModelConfig, versions: &[u64]) -> Result<Option<Split>, String> {
        match config.parameters.get(VERSION_WEIGHTS) {
            None => Ok(None),
            Some(p) => Split::parse(&p.string_value, versions).map(Some),
        }
    }

    /// Parses `"version:weight, ..."` against the served versions.
    pub fn parse(text: &str, versions: &[u64]) -> Result<Split, String> {
        let served = || versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let mut named: Vec<(u64, u64)> = Vec::new();
        for item in text.split(',').map(str::trim) {
            let bad = || format!("{VERSION_WEIGHTS}: '{item}' is not version:weight (e.g. \"1:90,2:10\")");
            let (v, w) = item.split_once(':').ok_or_else(bad)?;
            let version: u64 = v.trim().parse().map_err(|_| bad())?;
            let weight: u64 = w.trim().parse().map_err(|_| bad())?;
            if weight > MAX_WEIGHT {
                return Err(format!("{VERSION_WEIGHTS}: weight {weight} is more than {MAX_WEIGHT}"));
            }
            if !versions.contains(&version) {
                return Err(format!(
                    "{VERSION_WEIGHTS} names version {version}, which the model does not serve (it serves {})",
                    served()
                ));
            }
            if named.iter().any(|(n, _)| *n == version) {
                return Err(format!("{VERSION_WEIGHTS} names version {version} twice"));
            }
            named.push((version, weight));
        }
        let mut weights: Vec<(u64, u64)> = versions
            .iter()
            .map(|v| (*v, named.iter().find(|(n, _)| n == v).map_or(0, |(_, w)| *w)))
            .collect();
        weights.sort_unstable();
        weights.dedup_by_key(|(v, _)| *v);
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err(format!("{VERSION_WEIGHTS} gives every version weight 0"));
        }
        Ok(Split {
            weights,
            total,
            text: text.trim().to_string(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The versions a request at `point` tries, in order: the one whose range holds the point,
    /// then the other weighted versions by weight (when the first is not ready). Versions at
    /// weight 0 are never drawn.
    pub fn choose(&self, point: u64) -> Vec<u64> {
        let at = ((u128::from(point) * u128::from(self.total)) >> 64) as u64;
        let mut start = 0;
        let mut first = None;
        for &(v, w) in &self.weights {
            if w > 0 && at < start + w {
                first = Some(v);
                break;
            }
            start += w;
        }
        let mut rest: Vec<(u64, u64)> = self
            .weights
            .iter()
            .filter(|(v, w)| *w > 0 && Some(*v) != first)
            .copied()
            .collect();
        rest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        first.into_iter().chain(rest.into_iter().map(|(v, _)| v)).collect()
    }

    /// The weight of `version` (0 when it is not in the split).
    pub fn weight(&self, version: u64) -> u64 {
        self.weights.iter().find(|(v, _)| *v == version).map_or(0, |(_, w)| *w)
    }
}

/// Where on the line a request falls: its key's hash, or the next point of a Weyl sequence.
pub fn point(key: Option<&str>) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    match key {
        Some(k) => mix(fnv1a(k.as_bytes())),
        None => NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads similar keys ("user-1", "user-2") over the whole line.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A config with the split's parameter taken out: two configs equal but for their weights mean the
/// weights can change without reloading the versions.
pub fn without_weights(config: &ModelConfig) -> ModelConfig {
    let mut c = config.clone();
    c.parameters.remove(VERSION_WEIGHTS);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_against_the_served_versions() {
        let s = Split::parse(" 1:90, 2 : 10 ", &[1, 2, 3]).unwrap();
        assert_eq!(s.weights, vec![(1, 90), (2, 10), (3, 0)]);
        assert_eq!(s.total, 100);
        assert_eq!(s.weight(3), 0);
        for (text, needle) in [
            ("1:90,4:10", "does not serve (it serves 1, 2, 3)"),
            ("1:90,1:10", "twice"),
            ("1=90", "not version:weight"),
            ("1:-5", "not version:weight"),
            ("1:0,2:0", "weight 0"),
            ("", "not version:weight"),
            ("1:9999999", "more than"),
            ("x:1", "not version:weight"),
        ] {
            let e = Split::parse(text, &[1, 2, 3]).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn points_fall_by_weight_and_zero_weights_get_nothing() {
        let s = Split::parse("1:90,2:10,3:0", &[1, 2, 3]).unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            counts[s.choose(point(None))[0] as usize] += 1;
        }
        // The Weyl sequence meets the shares closely.
        assert!((8_950..=9_050).contains(&counts[1]), "{counts:?}");
        assert!((950..=1_050).contains(&counts[2]), "{counts:?}");
        assert_eq!(counts[3], 0);
        // Keys are spread the same way.
        let mut by_key = [0usize; 4];
        for k in 0..10_000 {
            by_key[s.choose(point(Some(&format!("user-{k}"))))[0] as usize] += 1;
        }
        assert!((8_800..=9_200).contains(&by_key[1]), "{by_key:?}");
        assert_eq!(by_key[3], 0);
        // The fallbacks never include a weight-0 version.
        assert!(s.choose(0).iter().all(|v| *v != 3));
        assert_eq!(s.choose(u64::MAX), vec![2, 1]);
    }

    #[test]
    fn a_key_stays_on_its_version_and_few_move_when_weights_change() {
        let a = Split::parse("1:90,2:10", &[1, 2]).unwrap();
        let b = Split::parse("1:80,2:20", &[1, 2]).unwrap();
        let mut moved = 0;
        for k in 0..10_000 {
            let key = format!("user-{k}");
            let p = point(Some(&key));
            assert_eq!(p, point(Some(&key)), "deterministic");
            let (before, after) = (a.choose(p)[0], b.choose(p)[0]);
            if before != after {
                moved += 1;
                // Only from the version that lost share to the one that gained it.
                assert_eq!((before, after), (1, 2));
            }
        }
        assert!((800..=1_200).contains(&moved), "{moved}");
    }
}
