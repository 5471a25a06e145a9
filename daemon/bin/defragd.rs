//! `defragd`: the service (no subcommand) and the one-shot commands.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    defragd::cli::run(defragd::cli::Cli::parse())
}
