//! `storectl`, the object store's command line: parses the arguments ([`cli`]) and runs the
//! subcommand ([`commands`]); what it prints comes from the `storectl` library's `ctl`.

mod cli;
mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    commands::run(cli::Cli::parse())
}
