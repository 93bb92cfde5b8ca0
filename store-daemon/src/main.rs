//! `store-daemon`: the flags and the daemon they start are in [`store_daemon::cli`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    store_daemon::cli::run(store_daemon::cli::Args::parse())
}
