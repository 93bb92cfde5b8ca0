//! `storectl`'s command line: every subcommand and flag, parsed by clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line client of the node-local object store.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// The daemon's socket [default: $RUNTIME_DIRECTORY/store.sock, /run/store/store.sock or
    /// $XDG_RUNTIME_DIR/store.sock].
    #[arg(long, global = true, env = "STORE_SOCKET")]
    pub(crate) socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum CertsCommand {
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
