//! The main job: the experiment in one command. Starts a local cluster (scheduler, daemons
//! with emulated 200 Mbit/s NICs, an S3 endpoint holding a speech model), times loading the
//! model on other nodes through the store and through S3, runs the speech model both ways,
//! and writes a report. See `store_demo::demo`.

use std::path::PathBuf;

use clap::Parser;
use store_demo::demo::{self, Audio, DemoConfig, report, roles::Role};

/// Loading a speech model on several nodes: this object store vs. S3 downloads vs.
/// single-source fan-out, on a local cluster with emulated NICs.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// A real s2t-medium model directory (config.json, model.safetensors, vocab.json);
    /// default: a generated model of the same size with random weights.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Architecture of the generated model: medium (285 MB), small (118 MB) or tiny.
    #[arg(long, default_value = "medium")]
    preset: String,
    /// Receiving nodes besides node-0 (the largest N); the cluster has one more.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Broadcast sizes to measure, e.g. 1,2,3 (default: 1 and --nodes). Each N costs
    /// about (N + 3) x S/B.
    #[arg(long = "n", value_delimiter = ',')]
    n_values: Vec<usize>,
    /// Consumers on one node.
    #[arg(short, long, default_value_t = 2)]
    k: usize,
    /// Each node's NIC in Mbit/s.
    #[arg(long, default_value_t = 200)]
    rate_mbit: u32,
    /// Run the nodes on network-namespace hosts with tbf-shaped links instead of loopback
    /// rate limits (root and iproute2 needed).
    #[arg(long)]
    netns: bool,
    /// MTU of the --netns links.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Where summary.md, report.json, the charts and the processes' logs go.
    #[arg(long, default_value = "target/store-demo")]
    report_dir: PathBuf,
    /// Speech sample (WAV); default: espeak-ng if installed, else the bundled sample.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Use the bundled speech sample even if espeak-ng is installed.
    #[arg(long, conflicts_with = "audio")]
    bundled_audio: bool,
    /// Decoder length cap of the runner (default: the model's; 20 for random weights).
    #[arg(long)]
    max_length: Option<usize>,
    /// Print the report as JSON on stdout (the log goes to stderr).
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Log filter of the daemons and the scheduler (their logs are in REPORT_DIR/logs).
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(role) = args.role {
        return demo::roles::run(role);
    }
    let mut cfg = DemoConfig::new(std::env::current_exe()?);
    cfg.model_dir = args.model_dir;
    cfg.preset = args.preset;
    cfg.receivers = args.nodes;
    cfg.n_values = if args.n_values.is_empty() { vec![1, args.nodes] } else { args.n_values };
    cfg.k = args.k;
    cfg.rate_mbit = args.rate_mbit;
    cfg.netns = args.netns;
    cfg.mtu = args.mtu;
    cfg.report_dir = args.report_dir;
    cfg.audio = match (args.audio, args.bundled_audio) {
        (Some(p), _) => Audio::File(p),
        (None, true) => Audio::Bundled,
        (None, false) => Audio::Auto,
    };
    cfg.max_length = args.max_length;
    cfg.progress = !args.no_progress;
    cfg.log = args.log;
    let json = args.json;
    let out = move |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let report = demo::run(&cfg, out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\n{}", report::table(&report));
        println!("{}", report::runner_text(&report));
        println!("{}", report::targets_text(&report));
        println!("total {:.0} s", report.total_seconds);
    }
    Ok(())
}
