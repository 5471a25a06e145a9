//! The service (`defragd --config FILE`, no subcommand) as a process this
//! test started: its config, store and logs live in a temp dir of its own
//! (`ServiceHome`), its stderr (the log) goes to a file that the test reads
//! while it runs, and it is signalled and killed by its PID only. Drop kills
//! a still running service (SIGKILL), so a failing test leaves no process
//! behind and its image can be unmounted.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::defragd::defragd_bin;
use super::image::tempdir;

/// Logged once a filesystem's writes are tracked whole (fanotify).
pub const TRACKING_WRITES: &str = "tracking writes on the whole filesystem";

/// Logged when a crawl pass over the filesystem at `root` ends ("crawl of
/// ROOT: pass done, N files assessed, M queued in ...").
pub fn crawl_pass_done(root: &Path) -> String {
    format!("crawl of {}: pass done", root.display())
}

/// One `[[filesystem]]` table.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub path: PathBuf,
    pub watch: Vec<PathBuf>,
}

/// The keys the tests set; everything else keeps its default. The defaults
/// here suit tests: a short quiet period, a crawl that runs once (its
/// interval is long) and fast, no pause on I/O pressure (tests run in
/// parallel and would pause each other), no throttle to speak of.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub filesystems: Vec<FsConfig>,
    pub max_mib_per_s: u64,
    pub chunk_mib: u64,
    pub pressure_percent: u64,
    pub min_mib_per_s: u64,
    /// 0: no ramp (the move goes at once at the ceiling, and never listens
    /// to the disk; tests run in parallel and their loads are their own).
    pub start_mib_per_s: u64,
    pub quiet_period: String,
    pub min_size: String,
    pub min_excess_extents: u64,
    pub min_score: u64,
    pub reserve_percent: u64,
    pub crawl_interval: String,
    pub files_per_second: u64,
    pub max_watches: u64,
    pub log_level: String,
    /// `[[filesystem]] medium` of every filesystem: "sysfs" by default, the
    /// loop device's rotational flag as the test sets it, not a
    /// measurement, which would read the host's disk under the image file
    /// and differ from machine to machine (tests/media.rs measures).
    pub medium: String,
}

impl ServiceConfig {
    /// Serves the filesystem mounted on `mount_point`, watching `watch`.
    pub fn new(mount_point: &Path, watch: &[&Path]) -> ServiceConfig {
        ServiceConfig {
            filesystems: vec![FsConfig {
                path: mount_point.to_path_buf(),
                watch: watch.iter().map(|p| p.to_path_buf()).collect(),
            }],
            max_mib_per_s: 10_000,
            chunk_mib: 1,
            pressure_percent: 0,
            min_mib_per_s: 4,
            start_mib_per_s: 0,
            quiet_period: "2s".into(),
            min_size: "1MiB".into(),
            min_excess_extents: 4,
            min_score: 10,
            reserve_percent: 5,
            crawl_interval: "24h".into(),
            files_per_second: 100_000,
            max_watches: 1000,
            log_level: "info".into(),
            medium: "sysfs".into(),
        }
    }

    /// The config file's text; the store in `state_dir`, the control
    /// socket at `control_socket` (each service its own: tests run several
    /// at once, and none may touch a real service's /run/defragd).
    pub fn to_toml(&self, state_dir: &Path, control_socket: &Path) -> String {
        let mut t = String::new();
        writeln!(t, "state_dir = {}", toml_str(&state_dir.to_string_lossy())).unwrap();
        for fs in &self.filesystems {
            let watch: Vec<String> = fs
                .watch
                .iter()
                .map(|w| toml_str(&w.to_string_lossy()))
                .collect();
            writeln!(
                t,
                "\n[[filesystem]]\npath = {}\nwatch = [{}]\nmedium = {}",
                toml_str(&fs.path.to_string_lossy()),
                watch.join(", "),
                toml_str(&self.medium)
            )
            .unwrap();
        }
        writeln!(
            t,
            "\n[throttle]\nmax_mib_per_s = {}\nchunk_mib = {}\npressure_percent = {}\nmin_mib_per_s = {}\nstart_mib_per_s = {}",
            self.max_mib_per_s,
            self.chunk_mib,
            self.pressure_percent,
            self.min_mib_per_s,
            self.start_mib_per_s
        )
        .unwrap();
        writeln!(
            t,
            "\n[policy]\nquiet_period = {}\nmin_size = {}\nmin_excess_extents = {}\nmin_score = {}\nreserve_percent = {}",
            toml_str(&self.quiet_period),
            toml_str(&self.min_size),
            self.min_excess_extents,
            self.min_score,
            self.reserve_percent
        )
        .unwrap();
        writeln!(
            t,
            "\n[crawl]\ninterval = {}\nfiles_per_second = {}",
            toml_str(&self.crawl_interval),
            self.files_per_second
        )
        .unwrap();
        writeln!(t, "\n[watch]\nmax_watches = {}", self.max_watches).unwrap();
        writeln!(t, "\n[service]\nlog_level = {}", toml_str(&self.log_level)).unwrap();
        writeln!(
            t,
            "\n[control]\nsocket = {}",
            toml_str(&control_socket.to_string_lossy())
        )
        .unwrap();
        t
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A temp dir holding one service's config (etc/defragd.toml), store
/// (state/) and the logs of each of its runs (run-N.log). Several runs of
/// the service share it, as a restarted service shares /var/lib/defragd.
pub struct ServiceHome {
    /// None only during Drop.
    dir: Option<tempfile::TempDir>,
    runs: std::cell::Cell<u32>,
}

impl Default for ServiceHome {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceHome {
    pub fn new() -> ServiceHome {
        let dir = tempdir();
        fs::create_dir_all(dir.path().join("etc")).expect("create etc dir");
        ServiceHome {
            dir: Some(dir),
            runs: std::cell::Cell::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("home dir").path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("etc").join("defragd.toml")
    }

    /// The control socket of this home's service.
    pub fn control_socket(&self) -> PathBuf {
        self.path().join("control.sock")
    }

    /// Writes `cfg` (with this home's state dir and control socket) as the
    /// config file.
    pub fn write_config(&self, cfg: &ServiceConfig) -> PathBuf {
        self.write_config_text(&cfg.to_toml(&self.state_dir(), &self.control_socket()))
    }

    /// Writes `text` as the config file, as is.
    pub fn write_config_text(&self, text: &str) -> PathBuf {
        let path = self.config_path();
        fs::write(&path, text).expect("write config");
        path
    }

    /// `defragd --config <config>` with `env` added to a clean environment
    /// (no DEFRAGD_LOG, DEFRAGD__*, NOTIFY_SOCKET or JOURNAL_STREAM from
    /// the test's own, NO_COLOR=1).
    pub fn start(&self, env: &[(&str, &str)]) -> Service {
        self.start_through(&[], env)
    }

    /// [`start`](Self::start), with defragd run through `wrapper` (a
    /// command that ends by exec'ing its arguments, so that the PID is
    /// defragd's: `unshare ... sh -c '...; exec "$@"' sh`, or `setpriv
    /// --bounding-set=-sys_admin`).
    pub fn start_through(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Service {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let log = self.path().join(format!("run-{n}.log"));
        let out = self.path().join(format!("run-{n}.stdout"));
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(defragd_bin());
                cmd
            }
            None => Command::new(defragd_bin()),
        };
        cmd.arg("--config").arg(self.config_path());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.to_ascii_uppercase().starts_with("DEFRAGD_")
                || [
                    "NOTIFY_SOCKET",
                    "JOURNAL_STREAM",
                    "WATCHDOG_USEC",
                    "WATCHDOG_PID",
                ]
                .contains(&name.as_ref())
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out).expect("create stdout file"))
            .stderr(File::create(&log).expect("create log file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", defragd_bin()));
        let pid = child.id();
        eprintln!("service run {n}: pid {pid}, log {}", log.display());
        Service {
            child: Some(child),
            pid,
            log,
            name: format!("service run {n} (pid {pid})"),
            started: Instant::now(),
            exit: None,
        }
    }
}

impl Drop for ServiceHome {
    /// A failed test keeps the config, the store and the logs for a look.
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() {
                eprintln!(
                    "kept the service's config, store and logs in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Removes ANSI escape sequences (CSI ... letter), in case colours are on.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One running (or finished) service process.
pub struct Service {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    name: String,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Time since the process was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The log (stderr) so far, without colour escapes.
    pub fn log(&self) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// Lines of the log so far that contain `pattern`.
    pub fn lines_with(&self, pattern: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_string)
            .collect()
    }

    /// The index of the first log line containing `pattern`.
    pub fn line_index(&self, pattern: &str) -> Option<usize> {
        self.log().lines().position(|l| l.contains(pattern))
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process still runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => {
                self.exit = Some(st);
                false
            }
            Some(Ok(None)) => true,
            _ => false,
        }
    }

    /// Waits until a log line satisfies `pred`; returns it. Fails the test
    /// (with the log's tail) at `timeout`, or at once if the process exits.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let t = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| pred(l)) {
                eprintln!(
                    "{}: after {:.1}s (age {:.1}s) saw {what}: {line}",
                    self.name,
                    t.elapsed().as_secs_f64(),
                    self.age().as_secs_f64()
                );
                return line.to_string();
            }
            if !self.is_running() {
                // One last look: the line may have come with the exit.
                if let Some(line) = self.log().lines().find(|l| pred(l)) {
                    return line.to_string();
                }
                panic!(
                    "{} exited ({:?}) before logging {what}; log:\n{}",
                    self.name,
                    self.exit,
                    self.tail(80)
                );
            }
            if t.elapsed() > timeout {
                panic!(
                    "{} did not log {what} within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.tail(80)
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a log line containing `pattern`; returns it.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_line(&format!("{pattern:?}"), timeout, |l| l.contains(pattern))
    }

    /// Waits until `n` log lines contain `pattern`; returns the n-th.
    pub fn wait_for_nth(&mut self, pattern: &str, n: usize, timeout: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(line) = self.lines_with(pattern).into_iter().nth(n - 1) {
                return line;
            }
            if t.elapsed() > timeout || !self.is_running() {
                panic!(
                    "{} did not log {pattern:?} {n} times within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.tail(80)
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the process (by its PID).
    pub fn sigterm(&mut self) {
        self.signal(nix::libc::SIGTERM);
    }

    fn signal(&mut self, sig: i32) {
        assert!(self.is_running(), "{} is not running", self.name);
        let pid = i32::try_from(self.pid).expect("pid fits in i32");
        // SAFETY: kill has no memory-safety preconditions; the PID is our
        // own child, not yet reaped (is_running above), so it is not reused.
        let rc = unsafe { nix::libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL (by PID) and reap.
    pub fn sigkill(&mut self) -> ExitStatus {
        self.signal(nix::libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
            .expect("the process outlived SIGKILL")
            .0
    }

    /// Waits at most `timeout` for the process to exit; returns its status
    /// and how long the wait took, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let t = Instant::now();
        loop {
            if !self.is_running() {
                return self.exit.map(|st| (st, t.elapsed()));
            }
            if t.elapsed() > timeout {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits up to `limit` for a clean exit; asserts status
    /// 0 and returns how long the exit took.
    pub fn stop(&mut self, limit: Duration) -> Duration {
        self.sigterm();
        let Some((st, took)) = self.wait_exit(limit) else {
            panic!(
                "{} did not exit within {limit:?} of SIGTERM; log tail:\n{}",
                self.name,
                self.tail(40)
            );
        };
        assert_eq!(
            st.code(),
            Some(0),
            "{} exited with {st} after SIGTERM; log tail:\n{}",
            self.name,
            self.tail(40)
        );
        took
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log tail ---\n{}\n---", self.name, self.tail(60));
        }
        if self.is_running() {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill(); // SIGKILL to this PID only
                let _ = child.wait();
            }
        }
    }
}
