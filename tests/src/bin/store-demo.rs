//! The main job: an embedded local store, a zero-copy walk-through, and the microbenchmark.

use std::time::Duration;

use clap::Parser;
use store_tests::demo;

/// Runs the object store on this machine and shows what it is for.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Size of the demo object and of the benchmark's large objects.
    #[arg(long, default_value = "256MiB")]
    size: bytesize::ByteSize,
    /// Seconds per calls/s benchmark case.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = demo::run(
        &demo::DemoConfig { size: args.size.as_u64(), bench_duration: Duration::from_secs_f64(args.seconds) },
        |line| {
            if !args.json {
                println!("{line}")
            }
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
