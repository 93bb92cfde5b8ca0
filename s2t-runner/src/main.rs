//! `s2t-runner --model SRC --audio FILE [--json] [--weights-digest]` and `s2t-runner gen-random`.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use s2t_runner::{ModelSource, Preset, RunOptions, Speech2TextConfig};

#[derive(Parser, Debug)]
#[command(name = "s2t-runner", about = "Speech2Text transcription with weights used in place from the store")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Model: a directory, store://PREFIX (objects PREFIX/config.json, PREFIX/model.safetensors,
    /// PREFIX/vocab.json in the local daemon; STORE_SOCKET selects it) or s3://BUCKET/PREFIX.
    #[arg(long, env = "S2T_MODEL", required = true)]
    model: Option<String>,
    /// WAV file (PCM 8/16/24/32-bit or 32-bit float, any rate and channel count).
    #[arg(long, required = true)]
    audio: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Number of beams (default: the config's num_beams; 1 = greedy).
    #[arg(long)]
    beams: Option<usize>,
    /// Maximum sequence length including the start token (default: the config's max_length).
    #[arg(long)]
    max_length: Option<usize>,
    /// Report the BLAKE3 of the weight bytes the runner held (`weights_blake3`), hashed after
    /// inference (outside every timing; it reads all of the weights).
    #[arg(long)]
    weights_digest: bool,
    /// Seconds to wait for store objects that are not sealed yet.
    #[arg(long, default_value_t = 5.0)]
    store_timeout: f64,
    /// Once the model is ready, print `READY <json>` and wait for a line on stdin before
    /// transcribing (lets tests and demos look at several runners at once).
    #[arg(long, hide = true)]
    pause_when_ready: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a model directory with random weights (its transcripts are noise).
    GenRandom {
        /// Architecture: medium (s2t-medium-librispeech-asr, 285 MB), small (118 MB) or tiny.
        #[arg(long, default_value = "medium")]
        config: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::GenRandom { config, out, seed }) = cli.command {
        let preset: Preset = config.parse().map_err(anyhow::Error::msg)?;
        let g = s2t_runner::random::generate(&Speech2TextConfig::preset(preset), &out, seed)?;
        println!(
            "wrote {} ({} parameters, {:.1} MB of weights); the weights are random: transcripts are noise",
            g.dir.display(),
            g.parameters,
            g.weight_bytes as f64 / 1e6
        );
        return Ok(());
    }
    let model = cli.model.context("--model is required")?;
    let audio = cli.audio.context("--audio is required")?;
    let source: ModelSource = model.parse()?;
    let opts = RunOptions {
        source,
        audio,
        num_beams: cli.beams,
        max_length: cli.max_length,
        store_timeout: Duration::from_secs_f64(cli.store_timeout.max(0.0)),
        weights_digest: cli.weights_digest,
    };
    let pause = cli.pause_when_ready;
    let report = s2t_runner::run(&opts, |ready| {
        if pause {
            println!("READY {}", serde_json::to_string(ready).unwrap_or_default());
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
    })
    .with_context(|| format!("transcribing {} with {}", opts.audio.display(), opts.source))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
