//! `store-scheduler`: the flags and the scheduler they start are in [`scheduler::cli`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    scheduler::cli::run(scheduler::cli::Args::parse())
}
