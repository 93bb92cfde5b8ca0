use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use store_client::client::PutOptions;
use store_client::{StoreClient, bench, ctl};

/// Command-line client of the node-local object store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's socket [default: $RUNTIME_DIRECTORY/store.sock, /run/store/store.sock or
    /// $XDG_RUNTIME_DIR/store.sock].
    #[arg(long, global = true, env = "STORE_SOCKET")]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a file (or `-` for standard input) as a sealed object.
    Put {
        file: PathBuf,
        /// Object name [default: the file's name].
        #[arg(long)]
        name: Option<String>,
        /// Let LRU eviction drop the object when room is needed.
        #[arg(long)]
        evictable: bool,
    },
    /// Store every file under DIR as PREFIX/relative/path (e.g. a model directory).
    PutDir {
        dir: PathBuf,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        evictable: bool,
    },
    /// Write an object to a file or standard output.
    Get {
        name: String,
        /// Output file, `-` for standard output.
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
        /// Seconds to wait for an object that is not sealed yet.
        #[arg(long, default_value_t = 0.0)]
        timeout: f64,
    },
    /// List objects.
    Ls,
    /// Show one object.
    Stat { name: String },
    /// Delete an object (mappings that exist stay valid until dropped).
    Rm { name: String },
    /// Where an object is in the cluster: holders and how much of it each has.
    Locate { name: String },
    /// The cluster's live nodes.
    Nodes,
    /// Ask nodes to pull an object; reports each node's seconds and MB/s.
    Replicate {
        name: String,
        /// Target node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "all", conflicts_with = "all")]
        to: Vec<String>,
        /// Every live node.
        #[arg(long)]
        all: bool,
        /// Seconds each node may take.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// Pull only from complete holders (single-source fan-out, for comparison).
        #[arg(long)]
        no_relay: bool,
    },
    /// Have the daemon fill an object from S3 (`s3://BUCKET/KEY`) and seal it. The daemon's
    /// environment selects the endpoint and credentials (STORE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...).
    Pull {
        url: String,
        /// Object name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        evictable: bool,
        /// Size of each ranged GET [default: the daemon's, 8 MiB].
        #[arg(long)]
        part_size: Option<bytesize::ByteSize>,
        /// Ranged GETs in flight [default: the daemon's, 8].
        #[arg(long)]
        concurrency: Option<u32>,
    },
    /// Make certificates for trying the cluster out and for tests.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Microbenchmark of the local store against the running daemon.
    Bench {
        /// Size of the large objects.
        #[arg(long, default_value = "1GiB")]
        large_size: bytesize::ByteSize,
        /// Seconds per calls/s case.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Repetitions of each large case (median reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Iterations of each latency case.
        #[arg(long, default_value_t = 2000)]
        latency_iterations: usize,
        /// Directory for the file-put case.
        #[arg(long, default_value = "/tmp")]
        scratch_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue NAME.pem and NAME.key, signed by the CA in DIR, for a node or the scheduler.
    Issue {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// Output directory [default: DIR].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(store_client::default_socket_path);
    let connect = || StoreClient::connect(&socket).context("is store-daemon running? (--socket / STORE_SOCKET)");
    match cli.command {
        Command::Put { file, name, evictable } => {
            let client = connect()?;
            let opts = PutOptions { evictable };
            let start = Instant::now();
            let info = if file.as_os_str() == "-" {
                let name = name.context("--name is required when reading standard input")?;
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data)?;
                client.put_with(&name, &data, opts)?
            } else {
                let name = match name {
                    Some(n) => n,
                    None => {
                        file.file_name().context("FILE has no file name; pass --name")?.to_string_lossy().into_owned()
                    }
                };
                let size = std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?.len();
                let spinner = ctl::spinner(size, &format!("copying {name} in the kernel"));
                let info = client.put_file(&name, &file, opts);
                spinner.finish_and_clear();
                info?
            };
            let secs = start.elapsed().as_secs_f64();
            if cli.json {
                let mut v = ctl::object_json(&info);
                v["seconds"] = secs.into();
                println!("{v}");
            } else {
                println!(
                    "{} {} sealed in {:.3} s ({:.2} GB/s), blake3 {}",
                    info.name,
                    bytesize::ByteSize(info.size),
                    secs,
                    info.size as f64 / secs / 1e9,
                    info.digest.map(|d| d.to_hex()).unwrap_or_default()
                );
            }
        }
        Command::PutDir { dir, prefix, evictable } => {
            let stored = connect()?.put_dir(&dir, &prefix, PutOptions { evictable })?;
            if cli.json {
                println!("{}", serde_json::Value::Array(stored.iter().map(ctl::object_json).collect()));
            } else {
                print!("{}", ctl::object_table(&stored));
            }
        }
        Command::Get { name, output, timeout } => {
            let client = connect()?;
            let guard = client.get(&name, Duration::from_secs_f64(timeout.max(0.0)))?;
            let bar = ctl::progress_bar(guard.len() as u64, &name);
            if output.as_os_str() == "-" {
                ctl::write_with_progress(&guard, &mut std::io::stdout().lock(), &bar)?;
            } else {
                let mut file =
                    std::fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
                ctl::write_with_progress(&guard, &mut file, &bar)?;
                if cli.json {
                    println!("{}", ctl::object_json(guard.info()));
                }
            }
        }
        Command::Ls => {
            let list = connect()?.list()?;
            if cli.json {
                println!("{}", serde_json::Value::Array(list.iter().map(ctl::object_json).collect()));
            } else {
                print!("{}", ctl::object_table(&list));
            }
        }
        Command::Stat { name } => {
            let info = connect()?.stat(&name)?;
            if cli.json {
                println!("{}", ctl::object_json(&info));
            } else {
                print!("{}", ctl::object_details(&info));
            }
        }
        Command::Rm { name } => {
            connect()?.delete(&name)?;
            if cli.json {
                println!("{}", serde_json::json!({ "deleted": name }));
            }
        }
        Command::Locate { name } => {
            let located = connect()?.locate(&name)?;
            if cli.json {
                println!("{}", ctl::locations_json(&located));
            } else {
                print!("{}", ctl::locations_table(&located));
            }
        }
        Command::Nodes => {
            let nodes = connect()?.nodes()?;
            if cli.json {
                println!("{}", ctl::nodes_json(&nodes));
            } else {
                print!("{}", ctl::nodes_table(&nodes));
            }
        }
        Command::Pull { url, name, evictable, part_size, concurrency } => {
            let opts = store_client::client::PullS3Options {
                evictable,
                part_size: part_size.map(|p| p.as_u64()),
                concurrency,
            };
            let spinner = ctl::spinner(u64::MAX, &format!("pulling {url}"));
            let pulled = connect()?.pull_s3(&url, &name, opts);
            spinner.finish_and_clear();
            let p = pulled?;
            if cli.json {
                let mut v = ctl::object_json(&p.info);
                v["origin"] = serde_json::json!({ "url": p.origin.url, "etag": p.origin.etag });
                v["download_seconds"] = p.download_seconds.into();
                v["seconds"] = p.total_seconds.into();
                v["retries"] = p.retries.into();
                println!("{v}");
            } else {
                println!(
                    "{} {} from {} sealed in {:.3} s (download {:.3} s, {:.2} GB/s, {} retries), blake3 {}",
                    p.info.name,
                    bytesize::ByteSize(p.info.size),
                    p.origin.url,
                    p.total_seconds,
                    p.download_seconds,
                    p.info.size as f64 / p.download_seconds.max(1e-9) / 1e9,
                    p.retries,
                    p.info.digest.map(|d| d.to_hex()).unwrap_or_default()
                );
            }
        }
        Command::Replicate { name, to, all, timeout, no_relay } => {
            let targets = if all { None } else { Some(to) };
            let outcomes =
                connect()?.replicate(&name, targets, Duration::from_secs_f64(timeout.max(0.0)), !no_relay)?;
            if cli.json {
                println!("{}", ctl::replicas_json(&outcomes));
            } else {
                print!("{}", ctl::replicas_table(&outcomes));
            }
            if outcomes.iter().any(|o| o.result.is_err()) {
                anyhow::bail!("replication failed on some nodes");
            }
        }
        Command::Certs { command } => match command {
            CertsCommand::Init { dir } => {
                store_client::tls::init_ca(&dir)?;
                println!("created {} and {}", dir.join("ca.pem").display(), dir.join("ca.key").display());
            }
            CertsCommand::Issue { name, dir, out } => {
                let (cert, key) = store_client::tls::issue(&dir, &name, out.as_deref().unwrap_or(&dir))?;
                println!("created {} and {}", cert.display(), key.display());
            }
        },
        Command::Bench { large_size, seconds, repeats, latency_iterations, scratch_dir } => {
            let cfg = bench::BenchConfig {
                socket: socket.clone(),
                large_size: large_size.as_u64(),
                duration: Duration::from_secs_f64(seconds),
                repeats: repeats.max(1),
                latency_iterations: latency_iterations.max(1),
                scratch_dir,
            };
            let report = bench::run(&cfg, |step| eprintln!("bench: {step}"))?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_table());
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}
