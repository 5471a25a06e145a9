//! Fault injection and the extra judges of the reliability suite
//! (tests/crash.rs, tests/writers/): filesystem shutdown with
//! EXT4_IOC_SHUTDOWN, signals to our own children by PID, recovery of an
//! image after a shutdown, a non-asserting `e2fsck -fn`, the kernel's
//! messages about one loop device, fio runs judged by their JSON and
//! their `verify:` lines, and the `SUMMARY ` lines the soak script reads.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::cmd::{cannot_start, sh_status, sync_fs};
use super::image::{FsKind, LoopImage};

// ---------------------------------------------------------------------------
// Counts and seeds from the environment; SUMMARY lines.

/// A count from the environment variable `name` (a whole number), or
/// `default`. A value that is not a number fails the test: a soak run with a
/// typo must not silently run the default.
pub fn env_count(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The seed from `name` (decimal or 0x-hex), else one from the clock.
/// Printed by the caller so that a failing run can be repeated.
pub fn env_seed(name: &str) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            d.as_secs() ^ u64::from(d.subsec_nanos()) ^ u64::from(std::process::id()) << 32
        }
    }
}

/// Prints `SUMMARY part=PART k=v ...` on the real stdout (past the test
/// harness's capture, so that a script sees it with or without
/// `--nocapture`), and appends it to $DEFRAGD_SUMMARY_FILE when set.
pub fn print_summary(part: &str, fields: &[(&str, String)]) {
    let mut line = format!("SUMMARY part={part}");
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(&v.replace(char::is_whitespace, "_"));
    }
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    if let Ok(path) = std::env::var("DEFRAGD_SUMMARY_FILE") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

// ---------------------------------------------------------------------------
// Filesystem shutdown.

/// The argument of EXT4_IOC_SHUTDOWN (the same values as XFS's
/// XFS_IOC_GOINGDOWN; `xfs_io -x -c 'shutdown -f'` sends LogFlush,
/// plain `shutdown` sends NoLogFlush, per xfsprogs' io/shutdown.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownFlag {
    /// EXT4_GOING_FLAGS_LOGFLUSH (1): commit the running transaction, then
    /// abort the journal. What a process did before survives.
    LogFlush = 1,
    /// EXT4_GOING_FLAGS_NOLOGFLUSH (2): abort the journal at once: like a
    /// power cut, everything not yet committed is lost.
    NoLogFlush = 2,
}

// EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32) = 0x8004587D; the kernel
// reads the flag through the pointer.
nix::ioctl_read!(ext4_ioc_shutdown, b'X', 125, u32);

/// Shuts the filesystem mounted on `mount_point` down (EXT4_IOC_SHUTDOWN
/// on its root directory). Afterwards every I/O on it returns EIO until it
/// is unmounted; the next mount replays the journal.
pub fn shutdown_fs(mount_point: &Path, flag: ShutdownFlag) {
    let dir = File::open(mount_point)
        .unwrap_or_else(|e| panic!("open {} for the shutdown: {e}", mount_point.display()));
    let mut arg = flag as u32;
    // SAFETY: a valid fd we own and a pointer to a live u32 for the
    // duration of the call; the kernel only reads it.
    let res = unsafe { ext4_ioc_shutdown(dir.as_raw_fd(), &mut arg) };
    if let Err(e) = res {
        panic!(
            "EXT4_IOC_SHUTDOWN({flag:?}) on {}: {e}",
            mount_point.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Signals to our own children, by PID.

/// Sends `sig` to `pid`, a child this test started and has not reaped
/// (so the PID is not reused). ESRCH (already gone) is not an error.
pub fn signal_pid(pid: u32, sig: i32) {
    let p = i32::try_from(pid).expect("pid fits in i32");
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { nix::libc::kill(p, sig) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(nix::libc::ESRCH),
            "kill({pid}, {sig}): {e}"
        );
    }
}

/// A `defragd` (or other) process this test started, with its stdout and
/// stderr going to files that can be read while it runs. Drop kills it
/// (by PID) if still running.
pub struct Proc {
    child: Option<Child>,
    pub pid: u32,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub started: Instant,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to `dir/NAME.out|err`.
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Proc {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}", cannot_start(&cmd, &e)));
        Proc {
            pid: child.id(),
            child: Some(child),
            stdout_path,
            stderr_path,
            started: Instant::now(),
            exit: None,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(st))) => {
                self.exit = Some(st);
                false
            }
            Some(Ok(None)) => true,
            _ => false,
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Waits up to `timeout` for the exit; None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        while self.is_running() {
            if t.elapsed() > timeout {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
        self.exit
    }

    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            signal_pid(self.pid, sig);
        }
    }

    /// SIGKILL and reap; the status (also when it had exited before).
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(nix::libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
            .expect("the process outlived SIGKILL")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Free space, e2fsck, kernel messages.

/// Free blocks of the filesystem holding `path` (statfs f_bfree, in units
/// of f_frsize: 4 KiB blocks on the test images), after `sync -f` so
/// that blocks freed by the last transactions are counted.
pub fn free_blocks(path: &Path) -> u64 {
    sync_fs(path);
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks_free() as u64
}

/// `e2fsck -fn IMAGE` on an image that is not mounted: (clean, output).
/// Clean means exit status 0.
pub fn fsck_image(image: &Path) -> (bool, String) {
    fsck_kind(image, FsKind::Ext4)
}

/// The read-only checker for `kind`, as named in messages.
pub fn fsck_name(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Xfs => "xfs_repair -n",
        FsKind::Btrfs => "btrfs check --readonly",
        _ => "e2fsck -fn",
    }
}

/// The read-only checker of `kind` on an image that is not mounted:
/// (clean, output). `e2fsck -fn`, `xfs_repair -n` (exit 1 when it finds
/// damage; it also reads an unreplayed log as damage, so mount and
/// unmount after a shutdown first), `btrfs check --readonly`. Clean means
/// exit status 0. Never writes to the image.
pub fn fsck_kind(image: &Path, kind: FsKind) -> (bool, String) {
    let img = image.as_os_str();
    let (ok, out, err) = match kind {
        FsKind::Xfs => sh_status("xfs_repair", [OsStr::new("-n"), img]),
        FsKind::Btrfs => sh_status(
            "btrfs",
            [OsStr::new("check"), OsStr::new("--readonly"), img],
        ),
        _ => sh_status("e2fsck", [OsStr::new("-fn"), img]),
    };
    (ok, format!("{out}{err}"))
}

/// The kernel's clock now ("[  123.456789]" in dmesg), to find the
/// messages that come later.
pub fn dmesg_mark() -> f64 {
    last_dmesg_time().unwrap_or(0.0)
}

fn dmesg_lines() -> Vec<(f64, String)> {
    let (ok, out, _) = sh_status("dmesg", std::iter::empty::<&str>());
    if !ok {
        return Vec::new();
    }
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (ts, msg) = rest.split_once(']')?;
            Some((ts.trim().parse().ok()?, msg.trim().to_string()))
        })
        .collect()
}

fn last_dmesg_time() -> Option<f64> {
    dmesg_lines().last().map(|(t, _)| *t)
}

/// ext4's messages about `dev` (e.g. "/dev/loop3") after `mark`.
pub fn ext4_messages_since(mark: f64, dev: &str) -> Vec<String> {
    let name = dev.trim_start_matches("/dev/");
    let tag = format!("EXT4-fs ({name})");
    let tag_err = format!("EXT4-fs error (device {name})");
    let tag_warn = format!("EXT4-fs warning (device {name})");
    dmesg_lines()
        .into_iter()
        .filter(|(t, m)| {
            *t > mark && (m.contains(&tag) || m.contains(&tag_err) || m.contains(&tag_warn))
        })
        .map(|(_, m)| m)
        .collect()
}

/// The kernel's messages about `dev` after `mark` from any of the
/// filesystems the kit makes: "EXT4-fs (loop3)", "XFS (loop3)",
/// "BTRFS info (device loop3)".
pub fn fs_messages_since(mark: f64, dev: &str) -> Vec<String> {
    let name = dev.trim_start_matches("/dev/");
    let xfs = format!("XFS ({name})");
    let by_device = format!("(device {name})");
    let ext4 = format!("EXT4-fs ({name})");
    dmesg_lines()
        .into_iter()
        .filter(|(t, m)| {
            *t > mark
                && (m.contains(&ext4)
                    || m.contains(&xfs)
                    || (m.contains(&by_device) && (m.contains("EXT4-fs") || m.contains("BTRFS"))))
        })
        .map(|(_, m)| m)
        .collect()
}

/// After a shutdown: unmount (works once the processes that had files open
/// on it are gone), mount again so the journal (ext4) or log (XFS)
/// replays and the orphan list (unlinked list) is processed, unmount.
/// Returns the kernel's messages about the device from the replay mount
/// (XFS: "Starting recovery" when there was a log to replay). The image
/// is left unmounted.
pub fn replay_journal(img: &mut LoopImage) -> Vec<String> {
    img.unmount();
    let mark = dmesg_mark();
    img.mount();
    let dev = img.device().unwrap_or_default().to_string();
    // Orphan cleanup happens during the mount; the messages are out when
    // mount returns.
    let msgs = fs_messages_since(mark, &dev);
    img.unmount();
    msgs
}

// ---------------------------------------------------------------------------
// fio.

/// One fio run, judged.
#[derive(Debug, Clone)]
pub struct FioResult {
    pub status: Option<i32>,
    /// The job's "error" in the JSON (an errno; 84 = EILSEQ is fio's code
    /// for a verification failure); None without JSON.
    pub error: Option<i64>,
    /// Lines on stderr (and stdout) starting "verify:": one per bad block.
    pub verify_errors: u64,
    pub write_bytes: u64,
    pub read_bytes: u64,
    pub elapsed: Duration,
    pub output: String,
}

impl FioResult {
    /// Zero verification errors, error 0 in the JSON, exit status 0.
    pub fn clean(&self) -> bool {
        self.status == Some(0) && self.error == Some(0) && self.verify_errors == 0
    }

    /// `clean` for a run stopped with SIGINT (`FioRun::interrupt`): exit
    /// status 128 is then fio's way of saying it was interrupted.
    pub fn clean_when_interrupted(&self) -> bool {
        matches!(self.status, Some(0) | Some(128))
            && self.error == Some(0)
            && self.verify_errors == 0
    }

    /// A failure message with the first lines fio printed.
    pub fn describe(&self) -> String {
        let head: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.trim_start().starts_with('"') && !l.trim().is_empty())
            .take(12)
            .collect();
        format!(
            "fio exit {:?}, JSON error {:?}, {} verify: lines, wrote {} B, read {} B in {:.1}s; output starts:\n{}",
            self.status,
            self.error,
            self.verify_errors,
            self.write_bytes,
            self.read_bytes,
            self.elapsed.as_secs_f64(),
            head.join("\n")
        )
    }
}

/// A fio process running in the background.
pub struct FioRun {
    proc_: Proc,
    _dir: tempfile::TempDir,
}

/// Starts `fio --output-format=json ARGS...`.
pub fn spawn_fio(args: &[String]) -> FioRun {
    let dir = super::image::tempdir();
    let mut cmd = Command::new("fio");
    cmd.arg("--output-format=json").args(args);
    cmd.current_dir(dir.path());
    let proc_ = Proc::spawn(cmd, dir.path(), "fio");
    FioRun { proc_, _dir: dir }
}

impl FioRun {
    pub fn is_running(&mut self) -> bool {
        self.proc_.is_running()
    }

    pub fn started(&self) -> Instant {
        self.proc_.started
    }

    /// SIGINT: fio stops its jobs, verifies nothing more, and prints its
    /// JSON (exit status 128 on 3.33 when interrupted, 0 if it had ended).
    pub fn interrupt(&mut self) {
        self.proc_.signal(nix::libc::SIGINT);
    }

    /// Waits (up to `limit`; then kills it and fails) and judges.
    pub fn wait(mut self, limit: Duration) -> FioResult {
        let status = match self.proc_.wait_exit(limit) {
            Some(st) => st,
            None => {
                self.proc_.kill();
                panic!(
                    "fio did not finish within {limit:?}; killed. stderr:\n{}",
                    self.proc_.stderr()
                );
            }
        };
        let elapsed = self.proc_.started.elapsed();
        let out = self.proc_.stdout();
        let err = self.proc_.stderr();
        judge_fio(status.code(), &out, &err, elapsed)
    }
}

/// Runs fio to the end (at most `limit`).
pub fn run_fio(args: &[String], limit: Duration) -> FioResult {
    spawn_fio(args).wait(limit)
}

/// The arguments every verified fio run over the first `size` bytes of
/// `path` shares: 4 KiB blocks, each written with a crc32c header and
/// checked against it, the first bad block fatal.
pub fn fio_verified(path: &Path, size: u64) -> Vec<String> {
    vec![
        format!("--filename={}", path.display()),
        format!("--size={size}"),
        "--bs=4k".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
    ]
}

/// fio with `first`, then `fio_verified(path, size)`, to the end (at most
/// `limit`); fails the test unless it ran clean.
pub fn run_fio_verified_clean(what: &str, first: &[&str], path: &Path, size: u64, limit: Duration) {
    let mut args: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    args.extend(fio_verified(path, size));
    let r = run_fio(&args, limit);
    assert!(
        r.clean(),
        "fio {what} on {}: {}",
        path.display(),
        r.describe()
    );
}

/// One sequential pass over the first `size` bytes of `path` that gives
/// every 4 KiB block a verify header, in place (the file keeps its
/// layout); fails the test unless it ran clean.
pub fn fio_format_in_place(path: &Path, size: u64, limit: Duration) {
    run_fio_verified_clean(
        "format",
        &[
            "--name=format",
            "--rw=write",
            "--overwrite=1",
            "--ioengine=libaio",
            "--direct=1",
            "--iodepth=32",
            "--do_verify=0",
        ],
        path,
        size,
        limit,
    );
}

/// Reads every block of the first `size` bytes of `path` back with direct
/// I/O and checks its header and crc32c.
pub fn fio_read_verify(path: &Path, size: u64, limit: Duration) -> FioResult {
    let mut args: Vec<String> = [
        "--name=readverify",
        "--rw=read",
        "--ioengine=libaio",
        "--direct=1",
        "--iodepth=16",
    ]
    .map(String::from)
    .to_vec();
    args.extend(fio_verified(path, size));
    run_fio(&args, limit)
}

/// How a verified fio writer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FioWrites {
    /// Direct I/O through libaio, 16 writes in flight.
    Direct,
    /// Buffered, one write at a time (psync), an fsync every 32 writes.
    Buffered,
}

/// A fio writer named `name` over the first `size` bytes of `path`, whose
/// blocks already carry verify headers: random 4 KiB overwrites for
/// `runtime`, each block read back and checked as it goes
/// (`verify_backlog=256`).
pub fn spawn_verified_writer(
    name: &str,
    writes: FioWrites,
    path: &Path,
    size: u64,
    runtime: Duration,
) -> FioRun {
    let mut args = vec![
        format!("--name={name}"),
        "--rw=randwrite".into(),
        "--overwrite=1".into(),
        "--do_verify=1".into(),
        "--verify_backlog=256".into(),
        "--time_based".into(),
        format!("--runtime={}", runtime.as_secs()),
    ];
    let engine = match writes {
        FioWrites::Direct => ["--ioengine=libaio", "--direct=1", "--iodepth=16"],
        FioWrites::Buffered => ["--ioengine=psync", "--direct=0", "--fsync=32"],
    };
    args.extend(engine.map(String::from));
    args.extend(fio_verified(path, size));
    spawn_fio(&args)
}

fn judge_fio(status: Option<i32>, out: &str, err: &str, elapsed: Duration) -> FioResult {
    let verify_errors = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.trim_start().starts_with("verify:"))
        .count() as u64;
    // fio may print "fio: pid=..., err=84/..." before the JSON document.
    let json = out
        .find('{')
        .and_then(|at| serde_json::from_str::<serde_json::Value>(&out[at..]).ok());
    let job = json
        .as_ref()
        .and_then(|j| j.get("jobs"))
        .and_then(|j| j.get(0))
        .cloned();
    let num = |dir: &str| {
        job.as_ref()
            .and_then(|j| j.get(dir))
            .and_then(|d| d.get("io_bytes"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    FioResult {
        status,
        error: job
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(serde_json::Value::as_i64),
        verify_errors,
        write_bytes: num("write"),
        read_bytes: num("read"),
        elapsed,
        output: format!("{err}{out}"),
    }
}
