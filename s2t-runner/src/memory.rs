//! The process's memory as the kernel accounts it (`/proc/self/smaps_rollup`).
//!
//! "Private" (`Private_Clean + Private_Dirty`) counts every resident page that only this
//! process maps, whatever backs it. That is the right measure for a store-backed model: the
//! daemon keeps its own mapping of each sealed object, so the weight pages a runner touches
//! are shared, and private memory is what the runner really adds (heap, stacks, activations,
//! converted tensors). For a model mapped from a file that no other process maps, the page
//! cache pages count as private too, although they are not copies; `anonymous` (heap and
//! stacks only) is the measure that separates "copied into the process" from "mapped".

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    pub rss_bytes: u64,
    /// `Private_Clean + Private_Dirty`.
    pub private_bytes: u64,
    /// `Shared_Clean + Shared_Dirty`.
    pub shared_bytes: u64,
    /// Anonymous memory (heap, stacks): what was copied or computed into the process.
    pub anonymous_bytes: u64,
}

impl MemoryUsage {
    /// Reads `/proc/<pid>/smaps_rollup` (`self` for this process); `None` where it does not exist.
    pub fn of(pid: &str) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        Some(Self::parse(&text))
    }

    pub fn current() -> Option<Self> {
        Self::of("self")
    }

    pub fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else { continue };
            let Ok(kib) = value.parse::<u64>() else { continue };
            let bytes = kib * 1024;
            match key {
                "Rss:" => m.rss_bytes = bytes,
                "Private_Clean:" | "Private_Dirty:" => m.private_bytes += bytes,
                "Shared_Clean:" | "Shared_Dirty:" => m.shared_bytes += bytes,
                "Anonymous:" => m.anonymous_bytes = bytes,
                _ => {}
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "00400000-7ffd [rollup]\nRss:                1000 kB\nPss:   800 kB\nShared_Clean:   100 kB\nShared_Dirty: 0 kB\nPrivate_Clean:  300 kB\nPrivate_Dirty:  600 kB\nAnonymous:  550 kB\n";
        let m = MemoryUsage::parse(text);
        assert_eq!(
            m,
            MemoryUsage {
                rss_bytes: 1_024_000,
                private_bytes: 921_600,
                shared_bytes: 102_400,
                anonymous_bytes: 563_200
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let m = MemoryUsage::current().expect("linux has smaps_rollup");
        assert!(m.rss_bytes > 0 && m.private_bytes > 0);
    }
}
