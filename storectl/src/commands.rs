//! What each subcommand does: a call on the client (or the S3 writer, the certificate
//! helpers, the microbenchmark), then its result printed through `storectl::ctl`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use store_client::StoreClient;
use store_client::client::PutOptions;
use storectl::{bench, ctl};

use crate::cli::{CertsCommand, Cli, Command};

/// Runs one parsed command line to the end: the daemon's answer printed as a table or JSON.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
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
