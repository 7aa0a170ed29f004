//! The host-RAM tier: evicted models keep their prepared weights here, bounded in bytes and dropped
//! least recently evicted first, so that making one resident again skips reading and compiling its
//! file. On the CPU the entry is the compiled model itself (moved, not copied: the device is host
//! memory); on a GPU it is the host copy the upload starts from.

use std::collections::VecDeque;

/// Entries by model name, oldest first.
#[derive(Debug)]
pub(super) struct HostTier<T> {
    entries: VecDeque<(String, u64, T)>,
    bytes: u64,
    limit: u64,
}

impl<T> HostTier<T> {
    pub(super) fn new(limit: u64) -> Self {
        HostTier {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Bytes the tier may hold.
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(super) fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _, _)| n == name)
    }

    /// Keeps `value` (of `bytes`) for `name`, dropping the oldest entries that no longer fit. A value
    /// larger than the whole tier is not kept. Returns what was dropped (the caller frees it outside
    /// any lock).
    pub(super) fn insert(&mut self, name: String, bytes: u64, value: T) -> Vec<(String, T)> {
        let mut dropped: Vec<(String, T)> = self.remove(&name).map(|v| (name.clone(), v)).into_iter().collect();
        if bytes > self.limit {
            dropped.push((name, value));
            return dropped;
        }
        while self.bytes + bytes > self.limit {
            match self.pop_oldest() {
                Some(old) => dropped.push(old),
                None => break,
            }
        }
        self.bytes += bytes;
        self.entries.push_back((name, bytes, value));
        dropped
    }

    /// Takes the entry of `name` out of the tier.
    pub(super) fn remove(&mut self, name: &str) -> Option<T> {
        let i = self.entries.iter().position(|(n, _, _)| n == name)?;
        let (_, bytes, value) = self.entries.remove(i)?;
        self.bytes -= bytes;
        Some(value)
    }

    /// Drops the oldest entry (to free memory the device needs).
    pub(super) fn pop_oldest(&mut self) -> Option<(String, T)> {
        let (name, bytes, value) = self.entries.pop_front()?;
        self.bytes -= bytes;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_oldest_out_first() {
        let mut t = HostTier::new(100);
        assert!(t.insert("a".into(), 40, 'a').is_empty());
        assert!(t.insert("b".into(), 40, 'b').is_empty());
        let dropped = t.insert("c".into(), 40, 'c');
        assert_eq!(dropped, vec![("a".to_string(), 'a')]);
        assert_eq!((t.bytes(), t.len()), (80, 2));
        assert_eq!(t.remove("b"), Some('b'));
        assert!(!t.contains("b") && t.contains("c"));
        // Too large for the tier: handed straight back.
        assert_eq!(t.insert("d".into(), 101, 'd'), vec![("d".to_string(), 'd')]);
        // Re-inserting a name replaces its entry.
        assert_eq!(t.insert("c".into(), 10, 'C'), vec![("c".to_string(), 'c')]);
        assert_eq!(t.bytes(), 10);
        assert_eq!(t.pop_oldest(), Some(("c".to_string(), 'C')));
        assert!(t.is_empty());
    }
}
