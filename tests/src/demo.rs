//! The demo behind `store-demo`: starts an embedded daemon, stores an object, maps it
//! from several consumers at once to show that they share one copy, and runs the
//! microbenchmark. Later issues add the cluster and S3 cases.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;
use store_client::bench::{self, BenchReport};
use store_client::sys;

use crate::EmbeddedDaemon;

#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Size of the demo object and of the benchmark's large objects.
    pub size: u64,
    pub bench_duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub object_size: u64,
    pub put_seconds: f64,
    pub digest: String,
    /// Seconds from request to readable mapping for each local consumer.
    pub consumer_map_seconds: Vec<f64>,
    /// Whether every consumer mapped the same memory (same memfd inode).
    pub consumers_share_pages: bool,
    pub bench: BenchReport,
}

/// Runs the demo; `say` receives human-readable progress lines.
pub fn run(cfg: &DemoConfig, mut say: impl FnMut(String)) -> anyhow::Result<DemoReport> {
    let capacity = (cfg.size * 3).max(1 << 30);
    let daemon = EmbeddedDaemon::start(capacity)?;
    say(format!("embedded store daemon on {} ({} budget)", daemon.socket().display(), bytesize::ByteSize(capacity)));

    let client = daemon.client()?;
    let data: Vec<u8> = (0..cfg.size).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect();
    let start = Instant::now();
    let info = client.put("demo/weights.bin", &data)?;
    let put_seconds = start.elapsed().as_secs_f64();
    let digest = info.digest.map(|d| d.to_hex()).unwrap_or_default();
    say(format!(
        "put demo/weights.bin: {} sealed in {:.3} s ({:.2} GB/s), blake3 {}",
        bytesize::ByteSize(cfg.size),
        put_seconds,
        cfg.size as f64 / put_seconds / 1e9,
        &digest[..16.min(digest.len())]
    ));
    drop(data);

    let consumers: Vec<_> = (0..3).map(|_| daemon.client()).collect::<anyhow::Result<_>>()?;
    let mut guards = Vec::new();
    let mut consumer_map_seconds = Vec::new();
    for c in &consumers {
        let start = Instant::now();
        let guard = c.get("demo/weights.bin", Duration::ZERO)?;
        std::hint::black_box(guard.first());
        consumer_map_seconds.push(start.elapsed().as_secs_f64());
        guards.push(guard);
    }
    let identities: Vec<_> = guards.iter().map(|g| sys::file_identity(g.fd().as_fd())).collect::<Result<_, _>>()?;
    let consumers_share_pages = identities.windows(2).all(|w| w[0] == w[1]);
    for (i, s) in consumer_map_seconds.iter().enumerate() {
        say(format!("consumer {} mapped it read-only in {:.1} us", i + 1, s * 1e6));
    }
    say(format!(
        "all consumers share one copy (same memfd inode): {consumers_share_pages}; {} leases held",
        client.stat("demo/weights.bin")?.leases
    ));
    drop(guards);
    client.delete("demo/weights.bin")?;

    say("running the microbenchmark (storectl bench)...".into());
    let scratch = tempfile::tempdir()?;
    let report = bench::run(
        &bench::BenchConfig {
            socket: daemon.socket().to_owned(),
            large_size: cfg.size,
            duration: cfg.bench_duration,
            repeats: 3,
            latency_iterations: 1000,
            scratch_dir: scratch.path().to_owned(),
        },
        |_| {},
    )?;
    say(report.to_table());
    Ok(DemoReport {
        object_size: cfg.size,
        put_seconds,
        digest,
        consumer_map_seconds,
        consumers_share_pages,
        bench: report,
    })
}
