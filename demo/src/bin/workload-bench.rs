//! The workload bench: a batch of tasks on a hybrid cluster (2 hpc hosts holding the inputs,
//! 2 cloud hosts behind shaped links), placed round-robin or by the scheduler, each with or
//! without prefetch, every run beside its lower bound. Needs root. See
//! `store_demo::workload_bench`.

use anyhow::bail;
use clap::Parser;
use store_demo::workload_bench::{self, Mode, WorkloadConfig};

/// Makespan of a batch of tasks on emulated hpc and cloud hosts, per cloud link rate, in
/// four modes: naive round-robin or data-aware placement, each with or without prefetch;
/// each run is printed beside a lower bound on its makespan (docs/workload-bench.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Rates of the cloud hosts' links, Mbit/s (each direction), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30,100,200")]
    rates: Vec<u32>,
    /// Modes to run (any subset, comma-separated): naive, naive+prefetch, data-aware,
    /// data-aware+prefetch.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "naive,naive+prefetch,data-aware,data-aware+prefetch"
    )]
    modes: Vec<Mode>,
    /// Number of tasks (and inputs, one per task).
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Size of each input.
    #[arg(long, default_value = "4MiB")]
    input_size: bytesize::ByteSize,
    /// Compute time of one task, seconds (a sleep; see the module documentation).
    #[arg(long, default_value_t = 0.5)]
    task_seconds: f64,
    /// Tasks each host runs at once.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    /// Object each cloud host pulls before a run, so the scheduler has seen its link.
    #[arg(long, default_value = "8MiB")]
    warmup_size: bytesize::ByteSize,
    /// MTU of the links.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Print the report as JSON on stdout (progress and the table go to stderr).
    #[arg(long)]
    json: bool,
    /// Log filter of the daemons and the scheduler (e.g. debug).
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !store_tests::netns::requires_root() {
        bail!("workload-bench needs root and iproute2 (network namespaces, tc); nothing was measured");
    }
    if !(args.task_seconds.is_finite() && args.task_seconds > 0.0) {
        bail!("--task-seconds must be a positive number");
    }
    let config = WorkloadConfig {
        rates_mbit: args.rates,
        modes: args.modes,
        tasks: args.tasks,
        input_size: args.input_size.as_u64(),
        task_seconds: args.task_seconds,
        slots: args.slots,
        warmup_size: args.warmup_size.as_u64(),
        mtu: args.mtu,
        log: args.log,
    };
    let report = workload_bench::run(&config, |line| eprintln!("workload-bench: {line}"))?;
    if args.json {
        eprint!("{}", report.to_table());
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
