//! The cluster bench: replication on emulated hosts (network namespaces, shaped links).
//! Needs root. See `store_demo::cluster_bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use store_demo::cluster_bench::{self, BenchConfig, Case};

/// Measures replication between emulated hosts: one receiver, local consumers, broadcast
/// to N hosts with and without relaying, and an unshaped link against bare quinn and TCP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Rate of every shaped link in Mbit/s (each direction).
    #[arg(long, default_value_t = 200)]
    rate_mbit: u32,
    /// Object size.
    #[arg(long, default_value = "256MiB")]
    size: bytesize::ByteSize,
    /// Largest number of broadcast receivers (each on its own host).
    #[arg(long, default_value_t = 5)]
    max_n: usize,
    /// Smallest number of broadcast receivers.
    #[arg(long, default_value_t = 1)]
    min_n: usize,
    /// Relay settings of the broadcast case: on (swarm), off (single source), or both.
    #[arg(long, value_delimiter = ',', default_value = "on,off", value_parser = parse_relay)]
    relay: Vec<bool>,
    /// MTU of the shaped links.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Cases to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "one,local,broadcast,unshaped")]
    cases: Vec<Case>,
    /// Rounds of the cheap cases (one, local, unshaped); medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// MTUs of the unshaped case.
    #[arg(long, value_delimiter = ',', default_value = "1500,9000")]
    unshaped_mtu: Vec<u32>,
    /// Log filter of the daemons and the scheduler (e.g. debug).
    #[arg(long, default_value = "warn")]
    log: String,
    /// Rate of the S3 endpoint host's link in Mbit/s (cases s3, s3-coop).
    #[arg(long, default_value_t = 2000)]
    s3_rate_mbit: u32,
    /// Largest number of consumers on one host (case s3).
    #[arg(long, default_value_t = 3)]
    max_k: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bare quinn receiver (run inside a host by the bench).
    #[command(hide = true)]
    QuinnSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert_dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Bare quinn sender (run inside a host by the bench); prints a JSON result.
    #[command(hide = true)]
    QuinnSource {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        server_name: String,
        #[arg(long)]
        cert_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        bytes: u64,
    },
}

fn parse_relay(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::QuinnSink { listen, cert_dir, name }) => {
            return cluster_bench::quinn_sink(listen, &cert_dir, &name);
        }
        Some(Command::QuinnSource { to, server_name, cert_dir, name, bytes }) => {
            let result = cluster_bench::quinn_source(to, &server_name, &cert_dir, &name, bytes)?;
            println!("{}", serde_json::to_string(&result)?);
            return Ok(());
        }
        None => {}
    }
    if !store_tests::netns::requires_root() {
        bail!("cluster-bench needs root and iproute2 (network namespaces, tc); nothing was measured");
    }
    let config = BenchConfig {
        rate_mbit: args.rate_mbit,
        size: args.size.as_u64(),
        min_n: args.min_n,
        max_n: args.max_n,
        relay_modes: args.relay,
        mtu: args.mtu,
        cases: args.cases,
        repeat: args.repeat,
        unshaped_mtus: args.unshaped_mtu,
        log: args.log,
        s3_rate_mbit: args.s3_rate_mbit,
        max_k: args.max_k,
    };
    let json = args.json;
    let report = cluster_bench::run(&config, |line| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
