//! Small tools of the soak run (sizes, contents, digests, /proc and metrics readings) and the
//! state the workers, the victims and the monitor share.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::ClientError;
use store_client::wire::object::ObjectId;

use super::config::{KEPT_FAILURES, KIB, MIB};
use store_tests::rng::Rng;

/// Object sizes: mostly small, some large, up to `max`.
pub(super) fn pick_size(rng: &mut Rng, max: u64) -> u64 {
    let size = match rng.below(100) {
        0..10 => rng.range(0, 64),
        10..65 => rng.range(65, 16 * KIB),
        65..90 => rng.range(16 * KIB + 1, 512 * KIB),
        90..98 => rng.range(512 * KIB + 1, 4 * MIB),
        _ => rng.range(4 * MIB + 1, 8 * MIB),
    };
    size.min(max)
}

/// Fills `buf` with xorshift64 bytes of `seed`.
pub(super) fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

pub(super) fn content(size: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    fill(&mut v, seed);
    v
}

pub(super) fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

pub(super) fn hex(d: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

pub(super) fn worker_name(i: u64) -> String {
    format!("soak/w/{i}")
}

pub(super) fn victim_name(i: u64) -> String {
    format!("soak/v/{i}")
}

/// `VmRSS`, `RssAnon`, `RssShmem` (KiB) and `Threads` of `pid`, or `None` if it is gone or
/// a zombie.
pub(super) fn proc_status(pid: u32) -> Option<(u64, u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let state = text.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim();
    if state.starts_with('Z') || state.starts_with('X') {
        return None;
    }
    Some((field("VmRSS:"), field("RssAnon:"), field("RssShmem:"), field("Threads:")))
}

/// `ok` or the error of a call, for a failure message.
pub(super) fn outcome_text<T>(r: &Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// Every shared writable mapping of the memfd with inode `ino`, in any process: `pid (comm)
/// perms range` from each `/proc/<pid>/maps`.
pub(super) fn shared_writable_mappers(ino: u64) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        for line in maps.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 6 && cols[4] == ino.to_string() && cols[5].starts_with("/memfd:") && cols[1].contains('w')
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                found.push(format!("{pid} ({}) {} {}", comm.trim(), cols[1], cols[0]));
            }
        }
    }
    found
}

pub(super) fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// The body of `GET /metrics`.
pub(super) fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics endpoint answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// The value of the unlabelled gauge `name` in an exposition.
pub(super) fn gauge(text: &str, name: &str) -> anyhow::Result<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .with_context(|| format!("no {name} in the metrics"))
}

/// Failures seen anywhere: all counted, the first few kept.
#[derive(Debug, Default)]
pub(super) struct Failures {
    pub(super) count: AtomicU64,
    pub(super) kept: Mutex<Vec<String>>,
}

impl Failures {
    pub(super) fn add(&self, message: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_FAILURES {
            kept.push(message);
        }
    }
}

/// The digest each writer computed over the bytes it wrote, by object id.
#[derive(Debug, Default)]
pub(super) struct Expected {
    pub(super) map: Mutex<HashMap<ObjectId, [u8; 32]>>,
    pub(super) registered: Condvar,
}

impl Expected {
    /// Records what `id` must contain; an id registered twice with other bytes is an error.
    pub(super) fn register(&self, id: ObjectId, d: [u8; 32]) -> Result<(), [u8; 32]> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.insert(id, d) {
            Some(old) if old != d => {
                map.insert(id, old);
                Err(old)
            }
            _ => {
                self.registered.notify_all();
                Ok(())
            }
        }
    }

    /// What `id` must contain, waiting up to `limit` for its writer to say (a put's writer
    /// learns the id only from the answer, after the object became visible).
    pub(super) fn wait(&self, id: ObjectId, limit: Duration) -> Option<[u8; 32]> {
        let deadline = Instant::now() + limit;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(d) = map.get(&id) {
                return Some(*d);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            map = self.registered.wait_timeout(map, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// State shared by the workers, the victim spawner and the monitor.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) socket: PathBuf,
    pub(super) names: u64,
    pub(super) max_size: u64,
    pub(super) stop: AtomicBool,
    pub(super) expected: Expected,
    pub(super) failures: Failures,
    /// Transient `WritableMapping` refusals, when tolerated ([`SoakConfig::tolerate_transient_busy`]).
    pub(super) known: Failures,
    pub(super) tolerate_transient_busy: bool,
    pub(super) ops: AtomicU64,
    pub(super) digest_checks: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_within_bounds_and_are_mostly_small() {
        let mut rng = Rng::new(7);
        let sizes: Vec<u64> = (0..10_000).map(|_| pick_size(&mut rng, 8 * MIB)).collect();
        assert!(sizes.iter().all(|&s| s <= 8 * MIB));
        assert!(sizes.contains(&0));
        let small = sizes.iter().filter(|&&s| s <= 16 * KIB).count();
        assert!(small > 6000 && small < 7000, "{small}");
    }

    #[test]
    fn gauges_are_read_from_an_exposition() {
        let text = "# HELP store_leases x\n# TYPE store_leases gauge\nstore_leases 3\nstore_leases_x 9\n";
        assert_eq!(gauge(text, "store_leases").unwrap(), 3);
        assert!(gauge(text, "store_objects").is_err());
    }

    #[test]
    fn a_digest_registered_twice_with_other_bytes_is_refused() {
        let e = Expected::default();
        assert!(e.register(1, [1; 32]).is_ok());
        assert!(e.register(1, [1; 32]).is_ok());
        assert_eq!(e.register(1, [2; 32]), Err([1; 32]));
        assert_eq!(e.wait(1, Duration::ZERO), Some([1; 32]));
        assert_eq!(e.wait(2, Duration::from_millis(10)), None);
    }
}
