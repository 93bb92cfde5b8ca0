//! The broadcast simulator as a bench: swarm (the production pull policy), swarm with
//! receivers dying, chain and binary tree, for several N and object sizes, in virtual time.
//! See `store_demo::broadcast_sim` and `store_daemon::replication::sim`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use store_demo::broadcast_sim::{self, BenchConfig, Event, Row, TABLE_HEADER};

/// Simulates a broadcast of one object from one source to N receivers for every N, size and
/// schedule, and prints the slowest receiver's time over S/B (one transfer over one link)
/// beside the pipelined lower bound, with the source's egress and whether every surviving
/// receiver verified the source's bytes. Draws a PNG chart per size. Exits 1 if any run
/// was not verified.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Numbers of receivers.
    #[arg(long, value_delimiter = ',', default_value = "2,5,16,64,256,1000")]
    nodes: Vec<usize>,
    /// Object sizes.
    #[arg(long, value_delimiter = ',', default_value = "256MiB,16GiB")]
    sizes: Vec<bytesize::ByteSize>,
    /// Uplink and downlink of every node, Mbit/s.
    #[arg(long, default_value_t = 200.0)]
    rate_mbit: f64,
    /// Fraction of the receivers dying mid-transfer in the swarm+failures case.
    #[arg(long, default_value_t = 0.05)]
    fail_fraction: f64,
    /// When they die, in units of S/B.
    #[arg(long, default_value_t = 0.3)]
    fail_at: f64,
    /// Probability that a chunk fetch fails, in every case.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the simulator's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip (and say so) a run whose wall time, extrapolated from the runs done, is longer;
    /// a run with nothing to extrapolate from is run.
    #[arg(long, default_value_t = 600.0)]
    max_wall_secs: f64,
    /// The chart; with several sizes one per size, named `<stem>-<size>.png`.
    #[arg(long, default_value = "docs/broadcast-sim.png")]
    png: PathBuf,
    /// Draw no chart.
    #[arg(long)]
    no_png: bool,
    /// Print one JSON object per row on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.nodes.contains(&0) {
        bail!("--nodes: every N must be at least 1");
    }
    if !args.rate_mbit.is_finite() || args.rate_mbit <= 0.0 {
        bail!("--rate-mbit must be positive");
    }
    let mut config = BenchConfig::new();
    config.nodes = args.nodes;
    config.sizes = args.sizes.iter().map(|s| s.as_u64()).collect();
    config.rate = args.rate_mbit * 1e6 / 8.0;
    config.fail_fraction = args.fail_fraction;
    config.fail_at = args.fail_at;
    config.loss = args.loss;
    config.seed = args.seed;
    config.max_wall = Duration::from_secs_f64(args.max_wall_secs);

    // A panicking simulation is reported in its row; one line here says where it panicked.
    std::panic::set_hook(Box::new(|info| eprintln!("broadcast-sim: {info}")));
    let json = args.json;
    // The table, and notes: on stdout, or on stderr when stdout carries the JSON.
    let table = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    let start = Instant::now();
    table(TABLE_HEADER);
    let mut rows: Vec<Row> = Vec::new();
    for &size in &config.sizes {
        let size_rows = broadcast_sim::run_size(&config, size, &rows, |event| {
            match event {
                Event::Row(row) => {
                    table(&row.table_line());
                    if json {
                        println!("{}", serde_json::to_string(row)?);
                        std::io::stdout().flush()?;
                    }
                }
                Event::Skipped { size_label, n, case, reason } => {
                    table(&format!("{size_label:<8} {n:>5}  {:<15} skipped: {reason}", case.label()));
                    if json {
                        let skipped = serde_json::json!({
                            "size": size, "size_label": size_label, "n": n, "schedule": case, "skipped": reason,
                        });
                        println!("{skipped}");
                        std::io::stdout().flush()?;
                    }
                }
            }
            Ok(())
        })?;
        if !args.no_png {
            let path = broadcast_sim::chart_path(&args.png, size, config.sizes.len());
            broadcast_sim::write_chart(&config, size, &size_rows, &path)?;
            table(&format!("# chart: {}", path.display()));
        }
        rows.extend(size_rows);
    }
    if let Some(slowest) = rows.iter().max_by(|a, b| a.wall_secs.total_cmp(&b.wall_secs)) {
        table(&format!(
            "# {} runs in {:.1} s wall; the slowest: {} ({:.1} s)",
            rows.len(),
            start.elapsed().as_secs_f64(),
            slowest.name(),
            slowest.wall_secs
        ));
    }
    let unverified: Vec<&Row> = rows.iter().filter(|r| !r.verified).collect();
    for r in &unverified {
        if let Some(message) = &r.panicked {
            eprintln!("broadcast-sim: {} not verified: the simulation panicked: {message}", r.name());
            continue;
        }
        eprintln!(
            "broadcast-sim: {} not verified: {} of {} surviving receivers completed, {} with the source's bytes{}",
            r.name(),
            r.completed,
            r.n - r.failed_nodes,
            r.verified_receivers,
            if r.hit_limit { " (the run hit the simulator's limit)" } else { "" }
        );
    }
    Ok(if unverified.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
