//! `s3-get`: downloads `s3://BUCKET/KEY` into this process's memory with the store's S3
//! engine and prints the throughput; the comparison path and the part-size/concurrency
//! measurement of `docs/s3-bench.md`. Settings come from the `STORE_S3_*` and `AWS_*`
//! environment, flags override part size and concurrency.

use clap::Parser;
use store_client::s3::{S3Config, S3Reader, S3Url};

#[derive(Debug, Parser)]
struct Args {
    url: String,
    #[arg(long)]
    part_size: Option<bytesize::ByteSize>,
    #[arg(long)]
    concurrency: Option<usize>,
    /// Downloads to make (each into a fresh buffer).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print the BLAKE3 of the content.
    #[arg(long)]
    hash: bool,
    /// One JSON line per download (bytes, seconds, retries) instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url: S3Url = args.url.parse()?;
    let config = S3Config::from_env()?.with_overrides(args.part_size.map(|p| p.as_u64()), args.concurrency)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let reader = S3Reader::new(config.clone()).await?;
        for _ in 0..args.repeats {
            let (buf, stats) = reader.download_to_vec(&url).await?;
            if args.json {
                let v = serde_json::json!({
                    "bytes": stats.bytes,
                    "seconds": stats.elapsed.as_secs_f64(),
                    "retries": stats.retries,
                    "blake3": args.hash.then(|| blake3::hash(&buf).to_hex().to_string()),
                });
                println!("{v}");
                continue;
            }
            println!(
                "part {} x{}: {} in {:.3} s = {:.2} Gbit/s ({} retries){}",
                bytesize::ByteSize(config.part_size),
                config.concurrency,
                bytesize::ByteSize(stats.bytes),
                stats.elapsed.as_secs_f64(),
                stats.bytes_per_second() * 8.0 / 1e9,
                stats.retries,
                if args.hash { format!(", blake3 {}", blake3::hash(&buf)) } else { String::new() },
            );
        }
        anyhow::Ok(())
    })
}
