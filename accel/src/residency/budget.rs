//! How much memory resident models may hold, and what they hold now. The bookkeeping is pure (no
//! clock, no device): the registry checks it together with a live reading of the device, so that a
//! neighbour that grows (the predictor sharing the GPU, another container's page cache) is seen even
//! though Accel did not cause it.

use std::fmt;
use std::str::FromStr;

/// A memory size as the command line gives it: bytes (`1073741824`, `512MiB`, `2GiB`, `1.5G`) or a
/// percentage of the device (`80%`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemorySize {
    Bytes(u64),
    Percent(f64),
}

impl MemorySize {
    /// The size in bytes on a device of `total` bytes.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            MemorySize::Bytes(b) => b,
            MemorySize::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!("'{s}' is not a memory size (bytes such as 536870912, 512MiB or 2GiB, or a percentage such as 80%)")
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("'{s}': a percentage must be between 0 and 100"));
            }
            return Ok(MemorySize::Percent(p));
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" | "gi" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" | "ti" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = number * scale as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(MemorySize::Bytes(bytes as u64))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySize::Bytes(b) => write!(f, "{}", Bytes(*b)),
            MemorySize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Bytes, printed for people (`12.5 MiB`) in messages and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

/// The device memory models may use and what they use: resident models (and copies still draining
/// after an unload) plus reservations held by loads in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    used: u64,
    reserved: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget {
            limit,
            used: 0,
            reserved: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Held by resident models and reservations.
    pub fn in_use(&self) -> u64 {
        self.used + self.reserved
    }

    /// What is missing for `need` more bytes to fit (0: it fits).
    pub fn shortfall(&self, need: u64) -> u64 {
        (self.in_use() + need).saturating_sub(self.limit)
    }

    /// Reserves `bytes` for a load in progress; the caller checked [`Budget::shortfall`].
    pub fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    /// Gives back a reservation that did not become a resident model.
    pub fn cancel(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }

    /// Turns a reservation of `reserved` bytes into a resident model of `actual` bytes.
    pub fn commit(&mut self, reserved: u64, actual: u64) {
        self.reserved = self.reserved.saturating_sub(reserved);
        self.used += actual;
    }

    /// A resident model's memory came back.
    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        let b = |s: &str| s.parse::<MemorySize>().map(|m| m.resolve(1000));
        assert_eq!(b("1024"), Ok(1024));
        assert_eq!(b("512MiB"), Ok(512 << 20));
        assert_eq!(b("2GiB"), Ok(2 << 30));
        assert_eq!(b("1.5G"), Ok(1_500_000_000));
        assert_eq!(b("4 kib"), Ok(4096));
        assert_eq!(b("80%"), Ok(800));
        assert!(b("80 apples").is_err());
        assert!(b("120%").is_err());
        assert!(b("-1").is_err());
        assert!(b("").is_err());
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(10).to_string(), "10 B");
    }

    #[test]
    fn reservations_become_resident_bytes() {
        let mut b = Budget::new(100);
        assert_eq!(b.shortfall(60), 0);
        b.reserve(60);
        assert_eq!(b.shortfall(60), 20);
        b.commit(60, 50);
        assert_eq!(b.in_use(), 50);
        b.reserve(30);
        b.cancel(30);
        b.release(50);
        assert_eq!(b.in_use(), 0);
    }
}
