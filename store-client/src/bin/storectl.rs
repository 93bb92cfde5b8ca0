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
    /// Ask the scheduler where to run tasks that read NEEDS: nodes ranked by estimated start
    /// (missing bytes over the node's observed inbound bandwidth, and its queued work).
    Place {
        /// Objects each task reads, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        needs: Vec<String>,
        /// Hard constraint k=v on the node's labels (repeatable).
        #[arg(long = "label", value_parser = store_client::wire::node::parse_label)]
        labels: Vec<(String, String)>,
        /// Hard constraint r=n: the node offers at least n of resource r (repeatable).
        #[arg(long = "resource", value_parser = store_client::wire::node::parse_resource)]
        resources: Vec<(String, u64)>,
        /// Hard constraint: only this node.
        #[arg(long)]
        pinned: Option<String>,
        /// Number of tasks.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Expected seconds of one task (what it adds to its node's queue).
        #[arg(long, default_value_t = 1.0)]
        task_seconds: f64,
        /// Have the chosen nodes start pulling what they miss now.
        #[arg(long)]
        prefetch: bool,
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
        /// Cooperative fetch onto these nodes (comma-separated): each reads a disjoint share
        /// from S3 and takes the rest from the others, so S3 serves the object about once.
        #[arg(long, value_delimiter = ',', conflicts_with = "all")]
        nodes: Option<Vec<String>>,
        /// Cooperative fetch onto every live node.
        #[arg(long)]
        all: bool,
        /// Seconds a cooperative fetch may take.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Upload an object to S3 (`s3://BUCKET/KEY`) from its read-only mapping: multipart with
    /// parallel parts, or one PutObject when it fits in a part. Endpoint and credentials come
    /// from this command's environment (STORE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...).
    Push {
        name: String,
        url: String,
        /// Size of each part (at least 5 MiB, S3's minimum) [default: STORE_S3_PART_SIZE or 8 MiB].
        #[arg(long)]
        part_size: Option<bytesize::ByteSize>,
        /// Parts in flight [default: STORE_S3_CONCURRENCY or 8].
        #[arg(long)]
        concurrency: Option<usize>,
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
        Command::Pull { url, name, nodes, all, timeout, .. } if all || nodes.is_some() => {
            let spinner = ctl::spinner(u64::MAX, &format!("pulling {url} cooperatively"));
            let pulled = connect()?.pull_s3_cooperative(&url, &name, nodes, Duration::from_secs_f64(timeout));
            spinner.finish_and_clear();
            let p = pulled?;
            if cli.json {
                println!("{}", ctl::cooperative_json(&p));
            } else {
                print!("{}", ctl::cooperative_table(&p));
            }
            if p.nodes.iter().any(|n| n.result.is_err()) {
                anyhow::bail!("some nodes failed");
            }
        }
        Command::Pull { url, name, evictable, part_size, concurrency, .. } => {
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
        Command::Push { name, url, part_size, concurrency } => {
            push(connect()?, &name, &url, part_size.map(|p| p.as_u64()), concurrency, cli.json)?;
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
        Command::Place { needs, labels, resources, pinned, count, task_seconds, prefetch } => {
            anyhow::ensure!(count >= 1, "--count must be at least 1");
            anyhow::ensure!(task_seconds.is_finite() && task_seconds >= 0.0, "--task-seconds must be >= 0");
            let spec = store_client::wire::placement::PlaceSpec {
                needs,
                labels: labels.into_iter().collect(),
                resources: resources.into_iter().collect(),
                pinned,
                count,
                task_seconds,
            };
            let outcome = connect()?.place(&spec, prefetch)?;
            if cli.json {
                println!("{}", ctl::placement_json(&outcome));
            } else {
                print!("{}", ctl::placement_table(&outcome));
            }
            if outcome.placement.tasks.is_empty() {
                anyhow::bail!("no node satisfies the constraints");
            }
            if outcome.prefetch.iter().any(|p| p.result.is_err()) {
                anyhow::bail!("prefetch failed on some nodes");
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

/// `storectl push`: the client maps the object and uploads it itself (the daemon is not
/// involved beyond the lease), so the parts go to the socket straight from the mapping.
#[cfg(feature = "s3")]
fn push(
    client: StoreClient,
    name: &str,
    url: &str,
    part_size: Option<u64>,
    concurrency: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    use store_client::s3::{S3Config, S3Url, S3Writer, object_body};
    let url: S3Url = url.parse()?;
    let config = S3Config::from_env()?.with_overrides(part_size, concurrency)?;
    let object = client.get(name, Duration::ZERO).with_context(|| format!("cannot push `{name}`"))?;
    let info = object.info().clone();
    let bar = ctl::progress_bar(info.size, &format!("pushing {name}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let stats = rt.block_on(async {
        let writer = S3Writer::new(config).await?;
        // Ctrl-C aborts the multipart upload instead of leaving its parts in the bucket.
        let interrupted = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        writer.upload_until(&url, object_body(object), &|_, len| bar.inc(len), interrupted).await
    });
    bar.finish_and_clear();
    let stats = stats.with_context(|| format!("pushing `{name}` to {url}"))?;
    if json {
        let mut v = ctl::object_json(&info);
        v["url"] = url.to_string().into();
        v["etag"] = stats.etag.clone().into();
        v["seconds"] = stats.elapsed.as_secs_f64().into();
        v["parts"] = stats.parts.into();
        v["part_size"] = stats.part_size.into();
        v["multipart"] = stats.multipart.into();
        v["retries"] = stats.retries.into();
        println!("{v}");
    } else {
        println!(
            "{} {} pushed to {} in {:.3} s ({:.2} GB/s, {} part{} of {}, {} retries), etag {}",
            info.name,
            bytesize::ByteSize(info.size),
            url,
            stats.elapsed.as_secs_f64(),
            stats.bytes_per_second() / 1e9,
            stats.parts,
            if stats.parts == 1 { "" } else { "s" },
            bytesize::ByteSize(stats.part_size),
            stats.retries,
            stats.etag
        );
    }
    Ok(())
}

#[cfg(not(feature = "s3"))]
fn push(
    _client: StoreClient,
    _name: &str,
    _url: &str,
    _part_size: Option<u64>,
    _concurrency: Option<usize>,
    _json: bool,
) -> anyhow::Result<()> {
    anyhow::bail!("this storectl was built without S3 support (cargo feature `s3` of store-client)")
}
