//! The command line of `defragd`: its definition (also the source of the
//! man page and completions) and the one-shot commands.

#[cfg(feature = "testing")]
mod bench;
mod check;
mod check_media;
mod defrag;
pub mod docs;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

const LONG_ABOUT: &str = "\
defragd keeps ext4, XFS and btrfs filesystems defragmented. With no subcommand \
it runs as a long-lived service (under systemd: Type=notify): it tracks writes \
on each covered filesystem with fanotify and crawls it slowly, queues the files \
that writes left in many pieces in a durable store, and moves them online with \
the kernel's own relocation (ext4: EXT4_IOC_MOVE_EXT; XFS: a checked extent \
swap; btrfs: BTRFS_IOC_DEFRAG_RANGE over unshared extents, so snapshots keep \
their sharing), one disk at a time, in the idle I/O class and under a throttle. \
A crash or reboot resumes each move where it stopped. The subcommands check and \
defrag do the same work once, from a terminal.";

const AFTER_LONG_HELP: &str = "\
FILES:
  /etc/defragd/defragd.toml   the config; every key is documented there
  /etc/defragd/conf.d/*.toml  drop-ins, read in name order after it
  /var/lib/defragd/state.db   the queue, move cursors, crawl cursors, history
  /run/defragd/control.sock   the socket defragctl(8) talks to

ENVIRONMENT:
  DEFRAGD__SECTION__KEY=value  overrides a config key
  DEFRAGD_LOG=debug            log filter (tracing EnvFilter syntax)

SIGNALS:
  SIGTERM, SIGINT  finish the current chunk, record progress, exit 0
  SIGHUP           reload the config (a bad one is refused, the old one kept)

EXIT STATUS:
  0   success (defrag: no file failed; skipped files are not failures)
  1   some file failed, or the service failed
  2   usage error
  78  the configuration is not valid (EX_CONFIG); systemd does not restart it";

/// Exit status when some file failed.
pub const EXIT_SOME_FAILED: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "defragd",
    version,
    about = "Online defragmentation for ext4, XFS and btrfs: a background service and one-shot commands",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// The service's config file (drop-ins are read from conf.d/ beside it).
    // Not `global`: only the service and `config check` (as
    // `defragd --config FILE config check`) read a config; `check` and
    // `defrag` would list an option that does nothing.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report fragmentation of files or trees, like `e4defrag -c`.
    Check(CheckArgs),
    /// Defragment files or whole trees now, online, with the kernel's own relocation.
    Defrag(DefragArgs),
    /// Work with the service's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// One MOVE_EXT call over the whole FILE into a fresh donor; prints its
    /// rate as JSON (for bench/run; only in builds with feature `testing`).
    #[cfg(feature = "testing")]
    #[command(hide = true)]
    BenchMoveExt { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config (and its drop-ins and DEFRAGD__ overrides) and print
    /// the effective one, or every error (exit status 78).
    Check {
        /// The config file [default: /etc/defragd/defragd.toml].
        file: Option<PathBuf>,
    },
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
    /// Also print e4defrag -c's fragmentation score of everything checked,
    /// by its own formula (always in --json as e4defrag_score).
    #[arg(long)]
    pub e4defrag_score: bool,
    /// What each device is taken to be for the read cost: auto (measured
    /// with about thirty 4 KiB reads of a fragmented file there, once the
    /// walk is done and while the disk is quiet; else the kernel's
    /// rotational flag), sysfs (the flag), ssd or hdd.
    #[arg(long, default_value = "auto", value_parser = parse_medium)]
    pub medium: crate::medium::MediumChoice,
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
    /// Convert block-mapped (ext3-era) files to extents first, then
    /// defragment them. The kernel's conversion is NOT crash-safe: a crash
    /// in the middle can leave an inode that e2fsck must reclaim (the data
    /// is kept). Files open for writing are never converted.
    #[arg(long)]
    pub convert_block_mapped: bool,
    /// On XFS without the reverse-mapping btree, swap files whole with
    /// SWAPEXT all the same: on Linux 6.18 a crash within about a minute
    /// after such a swap can leave a log that does not replay until
    /// xfs_repair (xfs_fsr has the same risk). Off: such files are left.
    #[arg(long)]
    pub xfs_swapext_without_rmapbt: bool,
    /// btrfs: leave extents at least this many MiB long where they are
    /// (what `btrfs filesystem defragment -t` takes; the kernel leaves
    /// 128 MiB extents alone whatever this says).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub extent_thresh_mib: u32,
    /// btrfs: also defragment nodatacow files (`chattr +C`). The rewrite
    /// is copy-on-write, once; off by default, as such files (databases,
    /// VM images) are often nodatacow to avoid exactly that.
    #[arg(long)]
    pub allow_nocow: bool,
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

fn parse_medium(s: &str) -> Result<crate::medium::MediumChoice, String> {
    crate::medium::MediumChoice::parse(s).ok_or_else(|| {
        format!(
            "`{s}` is not a medium; say one of {}",
            crate::medium::MediumChoice::WORDS.join(", ")
        )
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    if cli.command.is_some() {
        crate::logging::init("info");
        crate::sys::end_on_broken_pipe();
    }
    match cli.command {
        Some(Command::Check(args)) => check::run(&args),
        Some(Command::Defrag(args)) => defrag::run(&args),
        Some(Command::Config(ConfigCommand::Check { file })) => {
            config_check(file.or(cli.config).as_deref())
        }
        Some(Command::GenerateDocs { dir }) => write_docs(&dir),
        #[cfg(feature = "testing")]
        Some(Command::BenchMoveExt { file }) => bench::run(&file),
        None => crate::service::run(cli.config.as_deref()),
    }
}

fn write_docs(dir: &std::path::Path) -> ExitCode {
    match docs::generate(<Cli as clap::CommandFactory>::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "defragd: cannot write the docs into {}: {e}",
                crate::escape::escaped(dir)
            );
            ExitCode::FAILURE
        }
    }
}

/// `defragd config check`: like `nginx -t`.
fn config_check(file: Option<&std::path::Path>) -> ExitCode {
    let (result, sources) = crate::config::load_telling_sources(file);
    match result {
        Ok(settings) => {
            print!("{}", settings.render());
            eprintln!(
                "defragd: {}; the configuration is valid",
                sources.describe()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("defragd: the configuration is not valid:\n{errors}");
            ExitCode::from(crate::config::EX_CONFIG)
        }
    }
}
