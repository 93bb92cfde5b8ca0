//! `storectl bench`: a microbenchmark of the local store in the spirit of
//! `ray microbenchmark`, with this machine's own limits measured in the same run as
//! references (write() into a fresh memfd, memcpy into pre-faulted memory, page-cache read).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use store_client::client::{ClientError, PutOptions, StoreClient};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub socket: PathBuf,
    /// Size of the large objects (put GB/s, large get latency).
    pub large_size: u64,
    /// Wall time of each calls/s case.
    pub duration: Duration,
    /// Repetitions of each large-object case; the median is reported.
    pub repeats: usize,
    /// Iterations of each latency case.
    pub latency_iterations: usize,
    /// Directory for the file-put case (its page cache is what is measured).
    pub scratch_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub name: String,
    pub p50_us: f64,
    pub p99_us: f64,
    pub iterations: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub large_size: u64,
    pub results: Vec<Rate>,
    pub latencies: Vec<Latency>,
    pub references: Vec<Rate>,
    /// Derived ratios the targets are stated in.
    pub ratios: Vec<Rate>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, BenchError>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn gb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Bytes that are not all alike, so nothing downstream can shortcut them.
fn payload(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

fn prefix() -> String {
    format!("bench-{}", std::process::id())
}

/// Calls `op` in a loop for `duration`; returns calls per second.
fn calls_per_second(duration: Duration, mut op: impl FnMut(u64) -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        op(n)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn put_calls(client: &StoreClient, duration: Duration) -> Result<f64> {
    // Rounds of at most this many puts, deleted between rounds with the clock stopped, so
    // the bench never holds more objects (descriptors) than a small store would.
    const ROUND: u64 = 2000;
    let data = payload(1024);
    let p = prefix();
    let mut timed = Duration::ZERO;
    let mut calls = 0u64;
    while timed < duration {
        let start = Instant::now();
        let mut names = Vec::with_capacity(ROUND as usize);
        while names.len() < ROUND as usize && timed + start.elapsed() < duration {
            let name = format!("{p}/put/{calls}");
            client.put(&name, &data)?;
            names.push(name);
            calls += 1;
        }
        timed += start.elapsed();
        for name in names {
            client.delete(&name)?;
        }
    }
    Ok(calls as f64 / timed.as_secs_f64())
}

fn get_calls(client: &StoreClient, name: &str, duration: Duration) -> Result<f64> {
    calls_per_second(duration, |_| {
        let guard = client.get(name, Duration::ZERO)?;
        std::hint::black_box(guard.first());
        Ok(())
    })
}

fn multi_client_get_calls(socket: &Path, name: &str, clients: usize, duration: Duration) -> Result<f64> {
    let connections = (0..clients).map(|_| StoreClient::connect(socket)).collect::<std::result::Result<Vec<_>, _>>()?;
    let rates = std::thread::scope(|scope| {
        let handles: Vec<_> = connections.iter().map(|c| scope.spawn(move || get_calls(c, name, duration))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Ok(0.0))).collect::<Result<Vec<f64>>>()
    })?;
    Ok(rates.iter().sum())
}

fn latency(client: &StoreClient, name: &str, label: String, iterations: usize) -> Result<Latency> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let guard = client.get(name, Duration::ZERO)?;
        // "Readable": the first byte can be loaded through the mapping.
        std::hint::black_box(guard.first());
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        drop(guard);
    }
    samples.sort_by(f64::total_cmp);
    Ok(Latency { name: label, p50_us: percentile(&samples, 0.5), p99_us: percentile(&samples, 0.99), iterations })
}

/// Round trips per second of a bare 32-byte ping-pong over a unix socketpair between two
/// threads: the floor of any request that waits for an answer on this machine.
fn reference_socket_round_trips(duration: Duration) -> Result<f64> {
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 32];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 32];
    let rate = calls_per_second(duration, |_| {
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        Ok(())
    })?;
    drop(a);
    let _ = echo.join();
    Ok(rate)
}

/// write() of `data` into a fresh memfd: the page-allocation bound of any put.
fn reference_memfd_write(data: &[u8]) -> Result<f64> {
    let fd = store_client::sys::create_memfd(0)?;
    let mut file = File::from(fd);
    let start = Instant::now();
    for chunk in data.chunks(4 << 20) {
        file.write_all(chunk)?;
    }
    Ok(gb_per_s(data.len() as u64, start.elapsed()))
}

fn reference_memcpy(src: &[u8], dst: &mut [u8]) -> f64 {
    let start = Instant::now();
    dst.copy_from_slice(src);
    std::hint::black_box(&dst);
    gb_per_s(src.len() as u64, start.elapsed())
}

fn reference_file_read(path: &Path, dst: &mut [u8]) -> Result<f64> {
    let mut file = File::open(path)?;
    let start = Instant::now();
    let mut done = 0;
    while done < dst.len() {
        let end = (done + (4 << 20)).min(dst.len());
        let n = file.read(&mut dst[done..end])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(gb_per_s(done as u64, start.elapsed()))
}

/// Runs every case; `progress` is told what runs next.
pub fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    let client = StoreClient::connect(&cfg.socket)?;
    let p = prefix();
    let mut results = Vec::new();
    let mut latencies = Vec::new();
    let mut references = Vec::new();

    progress("put calls/s (1 KiB)");
    results.push(Rate {
        name: "put+seal calls/s, 1 client, 1 KiB",
        value: put_calls(&client, cfg.duration)?,
        unit: "calls/s",
    });

    let small = format!("{p}/small");
    client.put(&small, &payload(1024))?;
    progress("get calls/s (1 KiB)");
    results.push(Rate {
        name: "get calls/s, 1 client, 1 KiB",
        value: get_calls(&client, &small, cfg.duration)?,
        unit: "calls/s",
    });
    progress("get calls/s, 4 clients");
    results.push(Rate {
        name: "get calls/s, 4 clients, 1 KiB",
        value: multi_client_get_calls(&cfg.socket, &small, 4, cfg.duration)?,
        unit: "calls/s",
    });
    progress("reference: unix socket round trips");
    references.push(Rate {
        name: "bare unix-socket round trips (floor of any get)",
        value: reference_socket_round_trips(cfg.duration)?,
        unit: "calls/s",
    });
    progress("get latency (1 KiB)");
    latencies.push(latency(&client, &small, "get latency, 1 KiB".into(), cfg.latency_iterations)?);

    progress("preparing large payload");
    let len = cfg.large_size as usize;
    let data = payload(len);
    let mut sink = vec![1u8; len];

    progress("reference: write() into a fresh memfd");
    let memfd_ref = median((0..cfg.repeats).map(|_| reference_memfd_write(&data)).collect::<Result<Vec<_>>>()?);
    references.push(Rate { name: "write() into a fresh memfd", value: memfd_ref, unit: "GB/s" });
    progress("reference: memcpy into pre-faulted memory");
    let memcpy_ref = median((0..cfg.repeats).map(|_| reference_memcpy(&data, &mut sink)).collect());
    references.push(Rate { name: "memcpy into pre-faulted memory", value: memcpy_ref, unit: "GB/s" });

    progress("put from memory (large)");
    let large = format!("{p}/large");
    let mut put_mem = Vec::new();
    for _ in 0..cfg.repeats {
        let start = Instant::now();
        client.put(&large, &data)?;
        put_mem.push(gb_per_s(cfg.large_size, start.elapsed()));
        client.delete(&large)?;
    }
    let put_mem = median(put_mem);
    results.push(Rate { name: "put GB/s from memory (large, incl. seal + BLAKE3)", value: put_mem, unit: "GB/s" });

    progress("writing the scratch file");
    let file_path = cfg.scratch_dir.join(format!("{p}.bin"));
    std::fs::write(&file_path, &data)?;
    let _ = reference_file_read(&file_path, &mut sink)?; // warm the page cache
    progress("reference: page-cache file read");
    let read_ref =
        median((0..cfg.repeats).map(|_| reference_file_read(&file_path, &mut sink)).collect::<Result<Vec<_>>>()?);
    references.push(Rate { name: "page-cache file read", value: read_ref, unit: "GB/s" });

    progress("put from a cached file (large)");
    let mut put_file = Vec::new();
    for _ in 0..cfg.repeats {
        let start = Instant::now();
        client.put_file(&large, &file_path, PutOptions::default())?;
        put_file.push(gb_per_s(cfg.large_size, start.elapsed()));
        client.delete(&large)?;
    }
    let _ = std::fs::remove_file(&file_path);
    let put_file = median(put_file);
    results.push(Rate {
        name: "put GB/s from a cached file (large, incl. seal + BLAKE3)",
        value: put_file,
        unit: "GB/s",
    });

    progress("get latency (large)");
    client.put(&large, &data)?;
    drop(data);
    drop(sink);
    let big_latency = latency(
        &client,
        &large,
        format!("get latency, {}", bytesize::ByteSize(cfg.large_size)),
        cfg.latency_iterations,
    )?;
    client.delete(&large)?;
    client.delete(&small)?;

    let ratios = vec![
        Rate { name: "put from memory / write() into fresh memfd", value: put_mem / memfd_ref, unit: "x" },
        Rate { name: "put from file / write() into fresh memfd", value: put_file / memfd_ref, unit: "x" },
        Rate { name: "large get p50 / 1 KiB get p50", value: big_latency.p50_us / latencies[0].p50_us, unit: "x" },
    ];
    latencies.push(big_latency);
    Ok(BenchReport { large_size: cfg.large_size, results, latencies, references, ratios })
}

impl BenchReport {
    /// The report as a human table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| out.push_str(&format!("{label:<58} {value:>16}\n"));
        line("case", "result".into());
        for r in &self.results {
            line(r.name, fmt_rate(r));
        }
        for l in &self.latencies {
            line(&l.name, format!("p50 {:.1} us", l.p50_us));
            line("", format!("p99 {:.1} us", l.p99_us));
        }
        line("references, same run", String::new());
        for r in &self.references {
            line(&format!("  {}", r.name), fmt_rate(r));
        }
        line("ratios", String::new());
        for r in &self.ratios {
            line(&format!("  {}", r.name), fmt_rate(r));
        }
        out
    }
}

fn fmt_rate(r: &Rate) -> String {
    match r.unit {
        "calls/s" => format!("{:.0} calls/s", r.value),
        "GB/s" => format!("{:.2} GB/s", r.value),
        _ => format!("{:.2} {}", r.value, r.unit),
    }
}
