//! Running `defragd` (and `e4defrag`, its peer) and reading defragd's JSON
//! as the contract describes it.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use super::cmd::{run_timed, RUN_LIMIT};
use super::faults::Proc;

pub fn defragd_bin() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| package_bin("defragd"))
}

pub fn defragctl_bin() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| package_bin("defragctl"))
}

/// The path of the package's binary `name`. The test binaries took it at
/// compile time (`env!("CARGO_BIN_EXE_defragd")`), which this crate, built
/// before the binaries, cannot: `cargo test` also gives it to the test
/// process at run time, in the same variable. A test binary started by
/// hand finds it where cargo put both (target/PROFILE/deps/TEST and
/// target/PROFILE/NAME).
fn package_bin(name: &str) -> String {
    if let Ok(path) = std::env::var(format!("CARGO_BIN_EXE_{name}")) {
        return path;
    }
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/PROFILE/deps");
    profile_dir.join(name).to_string_lossy().into_owned()
}

#[derive(Debug, Clone, Deserialize)]
pub struct DefragFile {
    pub path: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub reason_code: Option<String>,
    pub size_bytes: u64,
    pub extents_before: Option<u64>,
    pub extents_after: Option<u64>,
    pub ideal_extents: Option<u64>,
    pub bytes_moved: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DefragSummary {
    pub defragmented: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes_moved: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DefragReport {
    pub files: Vec<DefragFile>,
    pub summary: DefragSummary,
}

impl DefragReport {
    /// The entry for PATH (matched on the path as given or canonical).
    pub fn file(&self, path: &Path) -> &DefragFile {
        self.find(path).unwrap_or_else(|| {
            panic!(
                "defragd's JSON has no entry for {}; entries: {:?}",
                path.display(),
                self.files.iter().map(|f| &f.path).collect::<Vec<_>>()
            )
        })
    }
    pub fn find(&self, path: &Path) -> Option<&DefragFile> {
        let canon = fs::canonicalize(path).ok();
        self.files.iter().find(|f| {
            let fp = Path::new(&f.path);
            fp == path || Some(fp) == canon.as_deref()
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckFile {
    pub path: String,
    pub size_bytes: u64,
    pub extents: u64,
    pub physical_runs: u64,
    pub ideal_extents: u64,
    pub score: f64,
    pub block_mapped: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckTotal {
    pub files: u64,
    pub extents: u64,
    pub physical_runs: u64,
    pub ideal_extents: u64,
    pub e4defrag_score: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckReport {
    pub files: Vec<CheckFile>,
    pub total: CheckTotal,
}

pub struct DefragdRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `defragd ARGS...` and returns its exit code, output and wall time.
pub fn defragd<I, S>(args: I) -> DefragdRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(defragd_bin());
    cmd.args(args);
    let (out, elapsed) = run_timed(&mut cmd, RUN_LIMIT);
    DefragdRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

impl DefragdRun {
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "defragd's stdout is not the expected JSON document ({e})\nexit code {}\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }
    pub fn assert_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "defragd exited {} (want {want})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// `defragd defrag --json EXTRA... PATHS...`, asserting exit code `code`.
pub fn defrag_json(extra: &[&str], paths: &[&Path], code: i32) -> (DefragReport, DefragdRun) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("defrag"), OsStr::new("--json")];
    args.extend(extra.iter().map(OsStr::new));
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let run = defragd(args);
    run.assert_code(code);
    (run.json(), run)
}

/// `defragd defrag --json --max-mib-per-s N PATH` in the background, its
/// output kept in `dir`: a move a test acts on while it runs.
pub fn spawn_defrag_json(path: &Path, mib_per_s: u64, dir: &Path) -> Proc {
    let mut cmd = Command::new(defragd_bin());
    cmd.args(["defrag", "--json", "--max-mib-per-s"])
        .arg(mib_per_s.to_string())
        .arg(path);
    Proc::spawn(cmd, dir, "defrag")
}

/// The report of `path` from a background `defrag --json` that has ended.
pub fn report_of(p: &Proc, path: &Path) -> DefragFile {
    let report: DefragReport = serde_json::from_str(&p.stdout()).unwrap_or_else(|e| {
        panic!(
            "defragd's JSON: {e}\nstdout:\n{}\nstderr:\n{}",
            p.stdout(),
            p.stderr()
        )
    });
    report.file(path).clone()
}

/// Runs `e4defrag PATHS...`; returns (success, wall time, stdout+stderr).
pub fn e4defrag(paths: &[&Path]) -> (bool, Duration, String) {
    let mut cmd = Command::new("e4defrag");
    cmd.args(paths);
    let (out, elapsed) = run_timed(&mut cmd, RUN_LIMIT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), elapsed, text)
}

/// e4defrag's "Success: [ n/m ]" / "Failure: [ n/m ]" lines, on one line
/// (its progress output is full of terminal escapes).
pub fn e4defrag_summary(out: &str) -> String {
    out.lines()
        .filter(|l| l.contains("Success:") || l.contains("Failure:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `defragd check --json [-r] PATHS...`, asserting exit 0.
pub fn check_json(recursive: bool, paths: &[&Path]) -> CheckReport {
    let mut args: Vec<&OsStr> = vec![OsStr::new("check"), OsStr::new("--json")];
    if recursive {
        args.push(OsStr::new("-r"));
    }
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let run = defragd(args);
    run.assert_code(0);
    run.json()
}
