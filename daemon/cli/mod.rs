//! The command line of `defragd`: its definition (also the source of the
//! man page and completions) and the one-shot commands.

mod check;
mod defrag;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit status when some file failed.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage errors (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "defragd",
    version,
    about = "Online defragmentation for ext4: a background service and one-shot commands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report fragmentation of files or trees, like `e4defrag -c`.
    Check(CheckArgs),
    /// Defragment files or whole trees now, online, with the kernel's MOVE_EXT.
    Defrag(DefragArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Walk directories recursively (within one filesystem).
    #[arg(short, long)]
    pub recursive: bool,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List every file, not only the 20 worst of a tree.
    #[arg(long)]
    pub all: bool,
    /// Files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DefragArgs {
    /// Print JSON for scripts instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Check everything and report what would be moved; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Move at most this many MiB per kernel call (a writer to the same file
    /// waits at most one chunk).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub chunk_mib: u64,
    /// Move at most this many MiB per second (default: as fast as the disk allows).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_mib_per_s: Option<u64>,
    /// Keep this percentage of the filesystem free: skip files whose new copy
    /// would eat into it.
    #[arg(long, default_value_t = crate::mover::DEFAULT_RESERVE_PERCENT, value_parser = parse_percent)]
    pub reserve_percent: f64,
    /// Files or directories (directories are walked recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=90.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a percentage from 0 to 90")),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Check(args)) => check::run(&args),
        Some(Command::Defrag(args)) => defrag::run(&args),
        None => {
            eprintln!(
                "defragd: the background service is not built yet; use `defragd check` or \
                 `defragd defrag` (see `defragd --help`)"
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}
