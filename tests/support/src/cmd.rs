//! Running external commands: with their status asserted, or bounded in
//! time, and killing only what the test itself started (by PID).

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The packages whose tools the tests run (as .ci/run installs them).
pub const TEST_PACKAGES: &str =
    "e2fsprogs util-linux xfsprogs btrfs-progs fio python3 acl attr psmisc prometheus";

/// The Debian package that installs `program`, for the programs of the
/// XFS and btrfs helpers (whose absence is the likeliest on a machine set
/// up for ext4 only); None for the rest.
pub fn package_of(program: &str) -> Option<&'static str> {
    match program {
        "mkfs.xfs" | "xfs_repair" | "xfs_io" | "xfs_fsr" | "xfs_bmap" => Some("xfsprogs"),
        "mkfs.btrfs" | "btrfs" => Some("btrfs-progs"),
        "mkfs.ext4" | "mkfs.ext3" | "e2fsck" | "filefrag" | "e4defrag" => Some("e2fsprogs"),
        _ => None,
    }
}

/// The panic message for a command that could not be started, saying what
/// to install when the program is missing.
pub fn cannot_start(cmd: &Command, e: &std::io::Error) -> String {
    let program = cmd.get_program().to_string_lossy();
    let hint = match (e.kind(), package_of(&program)) {
        (std::io::ErrorKind::NotFound, Some(pkg)) => format!(
            "; `{program}` comes with {pkg}: `apt-get install {pkg}` \
             (bash .ci/run installs all the tests need: {TEST_PACKAGES})"
        ),
        (std::io::ErrorKind::NotFound, None) => format!(
            "; is it installed? The tests need `apt-get install {TEST_PACKAGES}` \
             (bash .ci/run installs them)"
        ),
        _ => String::new(),
    };
    format!("cannot run `{}`: {e}{hint}", describe(cmd))
}

/// The programs of `programs` that are not on PATH (or not executable).
pub fn missing_tools(programs: &[&str]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    programs
        .iter()
        .filter(|p| {
            !std::env::split_paths(&path).any(|dir| {
                std::fs::metadata(dir.join(p))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .map(|p| p.to_string())
        .collect()
}

/// Fails the test, before it makes anything, when a program it runs is
/// missing, with the `apt-get install` line that brings them all. A test
/// needing mkfs.xfs or btrfs calls this first (a missing tool must not pass
/// for a skipped test: CI installs them).
pub fn require_tools(programs: &[&str]) {
    let missing = missing_tools(programs);
    if missing.is_empty() {
        return;
    }
    let mut packages: Vec<&str> = missing.iter().filter_map(|p| package_of(p)).collect();
    packages.sort_unstable();
    packages.dedup();
    let line = if packages.is_empty() {
        TEST_PACKAGES.to_string()
    } else {
        packages.join(" ")
    };
    panic!(
        "this test needs {} (not found on PATH): `apt-get install {line}` \
         (bash .ci/run installs all the tests need)",
        missing.join(", ")
    );
}

/// The tools of the XFS helpers (package xfsprogs).
pub const XFS_TOOLS: &[&str] = &["mkfs.xfs", "xfs_repair", "xfs_io", "xfs_fsr", "xfs_bmap"];
/// The tools of the btrfs helpers (package btrfs-progs).
pub const BTRFS_TOOLS: &[&str] = &["mkfs.btrfs", "btrfs"];

/// Runs a command and returns its output whatever its status.
pub fn run_raw(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}", cannot_start(cmd, &e)))
}

/// Runs a command, asserts exit status 0, returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_raw(cmd);
    assert!(
        out.status.success(),
        "`{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shorthand: `sh("prog", ["a", "b"])`, asserting success.
pub fn sh<I, S>(prog: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_ok(Command::new(prog).args(args))
}

/// Shorthand returning (success, stdout, stderr) without asserting.
pub fn sh_status<I, S>(prog: &str, args: I) -> (bool, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_raw(Command::new(prog).args(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sync -f PATH`: commit the filesystem holding PATH (also makes freed
/// blocks really free: ext4 releases them when the transaction commits).
pub fn sync_fs(path: &Path) {
    sh("sync", [OsStr::new("-f"), path.as_os_str()]);
}

/// A child process this test started; Drop kills it by PID if still running.
pub struct ChildGuard(pub Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Longest any single defragd or e4defrag run may take before the test
/// kills it (by PID) and fails: a hang must not hang the suite.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion or until `limit`, capturing output; returns the
/// output and the wall time. On timeout the child is killed and the test
/// fails.
pub fn run_timed(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}", cannot_start(cmd, &e)));
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().expect("child");
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if t.elapsed() > limit {
            drop(guard); // kills it
            panic!(
                "`{}` did not finish within {limit:?}; killed",
                describe(cmd)
            );
        }
        sleep(Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        elapsed,
    )
}

/// A peer tool's run: how long it took and what it said.
#[derive(Clone, Debug)]
pub struct ToolRun {
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (at most RUN_LIMIT), asserts exit 0, and times it.
pub fn timed_tool(cmd: &mut Command) -> ToolRun {
    let (out, elapsed) = run_timed(cmd, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "`{}` failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        describe(cmd),
        out.status
    );
    ToolRun {
        elapsed,
        stdout,
        stderr,
    }
}
