//! `defragctl`: controls the running defragd service over its control
//! socket. It only asks and shows; every decision is the service's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use defragd::clock::unix_now;
use defragd::control::client::{self, ClientError, EXIT_SERVICE_ERROR, EXIT_USAGE};
use defragd::control::format;
use defragd::control::protocol::{Request, Response, ResponseData, DEFAULT_SOCKET};
use defragd::escape::escaped;

/// How long to wait for most answers.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for `defrag`, which measures every file it is given.
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(600);

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  the service answered with an error, a path given to defrag got an
     error, or the service's answer did not arrive or could not be read
  2  usage error
  3  the service is not running (no socket, or nothing listening on it)
  4  permission denied: run as root, or as a member of the group the
     service allows";

#[derive(Debug, Parser)]
#[command(
    name = "defragctl",
    version,
    about = "Control the running defragd service",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    /// The service's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print the service's answer as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the service is doing: what each disk is moving, how many files
    /// are queued, bytes moved today, the filesystems covered.
    Status,
    /// Stop moving (within one chunk) until `defragctl resume`, or for a while.
    Pause {
        /// Resume by itself after this long, e.g. 10m, 1h, "1h 30m".
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_pause)]
        for_secs: Option<u64>,
    },
    /// Start moving again after a pause.
    Resume,
    /// The files waiting to be defragmented, most urgent first.
    Queue {
        /// Show at most N files [default: 50].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Recently finished jobs and their outcome, newest first.
    History {
        /// Show at most N jobs [default: 50].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Queue files (or whole trees) now, at the highest priority.
    Defrag {
        /// Files or directories; relative paths are taken from the current
        /// directory (symlinks are not resolved).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Reload the service's configuration (as `systemctl reload defragd` does).
    Reload,
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// A pause duration in whole seconds, rounded up.
fn parse_pause(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write it like 10m, 1h or \"1h 30m\")"))?;
    if duration.is_zero() {
        return Err("a pause must last at least 1s".to_string());
    }
    Ok(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

fn main() -> ExitCode {
    defragd::sys::end_on_broken_pipe();
    let cli = Cli::parse();
    if let Command::GenerateDocs { dir } = &cli.command {
        return write_docs(dir);
    }
    let requests = match requests(cli.command) {
        Ok(requests) => requests,
        Err(message) => {
            eprintln!("defragctl: {}", escaped(&message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match ask(&cli.socket, requests) {
        Ok(Ok(data)) => {
            if cli.json {
                println!("{}", format::json(&data));
            } else {
                println!("{}", format::human(&data, unix_now()));
            }
            let some_failed = matches!(&data, ResponseData::Defrag(replies)
                if replies.iter().any(|r| r.result == "error"));
            ExitCode::from(if some_failed { EXIT_SERVICE_ERROR } else { 0 })
        }
        Ok(Err(message)) => {
            report(cli.json, &message);
            ExitCode::from(EXIT_SERVICE_ERROR)
        }
        Err(e) => {
            report(cli.json, &e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// The requests a command line stands for (`defrag` of many paths may need
/// several), or why it cannot be sent.
fn requests(command: Command) -> Result<Vec<Request>, String> {
    let one = match command {
        Command::Status => Request::Status,
        Command::Pause { for_secs } => Request::Pause { for_secs },
        Command::Resume => Request::Resume,
        Command::Queue { limit } => Request::Queue { limit },
        Command::History { limit } => Request::History { limit },
        Command::Reload => Request::Reload,
        Command::GenerateDocs { .. } => {
            return Err("generate-docs does not talk to the service".to_string())
        }
        Command::Defrag { paths } => {
            let paths = paths
                .iter()
                .map(|path| {
                    // Absolute without resolving symlinks: the service must
                    // see the path the operator named.
                    let absolute = std::path::absolute(path)
                        .map_err(|e| format!("cannot make {} absolute: {e}", path.display()))?;
                    if absolute.to_str().is_none() {
                        return Err(format!(
                            "{} is not valid UTF-8, which the control socket cannot carry; \
                             use `defragd defrag` for it",
                            absolute.display()
                        ));
                    }
                    Ok(absolute)
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(client::defrag_requests(paths));
        }
    };
    Ok(vec![one])
}

/// Sends the requests in order; the data of all of them (defrag replies
/// are concatenated), or the first error.
fn ask(
    socket: &std::path::Path,
    requests: Vec<Request>,
) -> Result<Result<ResponseData, String>, ClientError> {
    let mut merged: Option<ResponseData> = None;
    for req in requests {
        let timeout = match req {
            Request::Defrag { .. } => DEFRAG_TIMEOUT,
            _ => TIMEOUT,
        };
        let data = match client::request(socket, &req, timeout)? {
            Response::Ok { data, .. } => data,
            Response::Error { error, .. } => return Ok(Err(error)),
        };
        merged = Some(match (merged, data) {
            (Some(ResponseData::Defrag(mut all)), ResponseData::Defrag(more)) => {
                all.extend(more);
                ResponseData::Defrag(all)
            }
            (_, data) => data,
        });
    }
    Ok(merged.ok_or_else(|| "nothing to send".to_string()))
}

fn write_docs(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    match defragd::cli::docs::generate(Cli::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "defragctl: cannot write the docs into {}: {e}",
                escaped(dir)
            );
            ExitCode::FAILURE
        }
    }
}

/// An error for the operator: the service's own words (or a socket's, if
/// something else answers there) are untrusted, so they are escaped unless
/// they go out as JSON.
fn report(json: bool, message: &str) {
    if json {
        println!("{}", format::json_error(message));
    } else {
        eprintln!("defragctl: {}", escaped(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("defragctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_become_requests() {
        let cli = parse(&["--json", "pause", "--for", "10m"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            requests(cli.command).unwrap(),
            vec![Request::Pause {
                for_secs: Some(600)
            }]
        );
        let cli = parse(&["pause", "--for", "1h 30m", "--socket", "/tmp/s"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        assert_eq!(
            requests(cli.command).unwrap(),
            vec![Request::Pause {
                for_secs: Some(5400)
            }]
        );
        let cli = parse(&["queue", "--limit", "7"]).unwrap();
        assert_eq!(
            requests(cli.command).unwrap(),
            vec![Request::Queue { limit: Some(7) }]
        );
        let cli = parse(&["history"]).unwrap();
        assert_eq!(
            requests(cli.command).unwrap(),
            vec![Request::History { limit: None }]
        );
    }

    #[test]
    fn pause_durations() {
        assert_eq!(parse_pause("10m"), Ok(600));
        assert_eq!(parse_pause("1500ms"), Ok(2));
        assert!(parse_pause("0s").is_err());
        assert!(parse_pause("soon").unwrap_err().contains("10m"));
        assert!(parse(&["pause", "--for", "soon"]).is_err());
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["defrag"]).is_err());
        assert!(parse(&["queue", "--limit", "-1"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert_eq!(
            parse(&["defrag"]).unwrap_err().exit_code(),
            i32::from(EXIT_USAGE)
        );
    }

    #[test]
    fn defrag_paths_are_made_absolute_without_resolving_links() {
        let cli = parse(&["defrag", "some/link/../file", "/abs/x"]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        match requests(cli.command).unwrap().as_slice() {
            [Request::Defrag { paths }] => {
                assert_eq!(paths[0], cwd.join("some/link/../file"));
                assert_eq!(paths[1], PathBuf::from("/abs/x"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_paths_are_refused_before_sending() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/srv/\xff");
        let cli = Cli::try_parse_from([
            std::ffi::OsStr::new("defragctl"),
            std::ffi::OsStr::new("defrag"),
            odd,
        ])
        .unwrap();
        assert!(requests(cli.command).unwrap_err().contains("UTF-8"));
    }
}
