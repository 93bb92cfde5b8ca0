//! A set of chunk indices: which chunks of an object a node holds.

use serde::{Deserialize, Serialize};

/// A fixed-size bitmap of `len` chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSet {
    len: u64,
    words: Vec<u64>,
}

impl ChunkSet {
    pub fn empty(len: u64) -> Self {
        Self { len, words: vec![0; len.div_ceil(64) as usize] }
    }

    pub fn full(len: u64) -> Self {
        let mut s = Self::empty(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// The set of `len` chunks holding exactly `items` (out-of-range items are ignored).
    pub fn from_iter_len(len: u64, items: impl IntoIterator<Item = u64>) -> Self {
        let mut s = Self::empty(len);
        for i in items {
            s.insert(i);
        }
        s
    }

    pub fn remove(&mut self, index: u64) -> bool {
        if !self.contains(index) {
            return false;
        }
        self.words[(index / 64) as usize] &= !(1 << (index % 64));
        true
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, index: u64) -> bool {
        if index >= self.len {
            return false;
        }
        let (w, b) = ((index / 64) as usize, index % 64);
        let was = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !was
    }

    pub fn contains(&self, index: u64) -> bool {
        index < self.len && self.words.get((index / 64) as usize).is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }

    /// Adds every chunk of `other`; a set of another length changes nothing.
    pub fn union_with(&mut self, other: &ChunkSet) {
        if other.len == self.len && other.words.len() == self.words.len() {
            for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
                *mine |= theirs;
            }
        }
    }

    /// Whether the set is well formed (decoded input may not be).
    pub fn is_valid(&self) -> bool {
        self.words.len() as u64 == self.len.div_ceil(64)
            && (self.len.is_multiple_of(64) || self.words.last().is_none_or(|w| w >> (self.len % 64) == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_membership_and_counts() {
        let mut s = ChunkSet::empty(130);
        assert!(s.insert(0));
        assert!(s.insert(129));
        assert!(!s.insert(129));
        assert!(!s.insert(130));
        assert!(s.contains(129) && !s.contains(128) && !s.contains(500));
        assert_eq!(s.count(), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 129]);
        assert!(ChunkSet::full(130).is_complete());
        assert!(s.is_valid());
        let bad = ChunkSet { len: 3, words: vec![0xff] };
        assert!(!bad.is_valid());
    }
}
