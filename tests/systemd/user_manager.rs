//! A private `systemd --user` for the tests of parts 2 and 3: booted in a
//! mount namespace and cgroups of its own, with the drop-ins a manager
//! without journald needs, its own log (a journal socket of the test's), and
//! a guard that leaves nothing behind.

use super::*;

/// What this test must add to the unit for a private user manager. The
/// rest of the unit runs as written, sandboxing included: the manager runs
/// as root, so namespaces, seccomp, capabilities, Nice=, CPUScheduling*=
/// and IOScheduling*= all apply for real, and DevicePolicy=/DeviceAllow= do
/// too where the test can delegate the devices hierarchy (see
/// `cgroup_hierarchies`). Units here find their directories under the XDG
/// dirs (RuntimeDirectory= in $XDG_RUNTIME_DIR, State/Configuration-
/// Directory= both in $XDG_CONFIG_HOME with systemd 252, hence its note
/// that the directory's mode differs), not in /run, /var/lib and /etc;
/// After=local-fs.target names a unit a user manager does not have, which
/// is no error.
pub(super) const USER_MANAGER_DROP_IN: &str = "\
# Added by tests/systemd/ for a private user manager.
[Service]
# There is no journald here: the output goes to a file the test reads.
StandardOutput=append:LOG
StandardError=append:LOG
";

/// For the watchdog test only: the main loop hangs 3 s after start and the
/// watchdog is 4 s, so the kill comes within seconds.
pub(super) const WATCHDOG_DROP_IN: &str = "\
# Added by tests/systemd/ for the watchdog test.
[Service]
Environment=DEFRAGD_TEST_HANG_MAIN_LOOP_AFTER=3
WatchdogSec=4s
# The watchdog's SIGABRT would dump the core of a debug binary (core_pattern
# is a plain file here); a stop of a hung instance need not wait 30 s.
LimitCORE=0
TimeoutStopSec=5s
";

/// A unit that keeps defragd.service loaded: After= makes a reference, and
/// a referenced unit is not garbage-collected when it goes inactive, so
/// Result= and ExecMainStatus= of a stopped service can still be read.
pub(super) const HOLDER: &str = "defragd-test-holder.service";
pub(super) const HOLDER_UNIT: &str = "\
[Unit]
Description=Keeps defragd.service loaded for tests/systemd/
After=defragd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
StandardOutput=null
";

/// The cgroup hierarchies (mount points) a manager needs a cgroup of its own
/// in.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        // Unified: one tree, and device rules are BPF programs in it.
        return vec![root.to_path_buf()];
    }
    // Hybrid (as here): systemd tracks units in the named v1 hierarchy
    // "systemd" and in the v2 tree "unified". The devices controller is a
    // v1 hierarchy of its own; a cgroup there lets the manager enforce
    // DevicePolicy=/DeviceAllow= as PID 1 would.
    let found: Vec<PathBuf> = ["systemd", "unified", "devices"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    assert!(
        found.iter().any(|p| p.ends_with("systemd")),
        "no cgroup hierarchy for systemd under /sys/fs/cgroup (found {found:?})"
    );
    found
}

fn systemd_binary() -> &'static str {
    ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd is not installed (no /lib/systemd/systemd)")
}

/// The files and nodes PID 1 makes in /run/systemd/inaccessible, which
/// the manager mounts over what a unit may not see (ProtectKernelLogs=
/// hides /dev/kmsg with `chr`). A user manager makes its own under
/// $XDG_RUNTIME_DIR, but systemd 252 looks in /run/systemd for them.
fn make_inaccessible_nodes(dir: &Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    fs::create_dir_all(dir.join("dir")).expect("create inaccessible/dir");
    fs::write(dir.join("reg"), b"").expect("create inaccessible/reg");
    nix::unistd::mkfifo(&dir.join("fifo"), Mode::empty()).expect("mkfifo inaccessible/fifo");
    mknod(
        &dir.join("chr"),
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    )
    .expect("mknod inaccessible/chr");
    mknod(
        &dir.join("blk"),
        SFlag::S_IFBLK,
        Mode::empty(),
        makedev(0, 0),
    )
    .expect("mknod inaccessible/blk");
    drop(UnixListener::bind(dir.join("sock")).expect("bind inaccessible/sock"));
    for name in ["dir", "reg", "fifo", "chr", "blk", "sock"] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o000))
            .expect("chmod 0 inaccessible node");
    }
}

/// The manager's own log: it logs to "the journal", i.e. datagrams of
/// `KEY=value` fields on /run/systemd/journal/socket, which in its
/// namespace is a directory of the test where this thread listens.
struct ManagerLog {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The fields of one native journal datagram: `KEY=value\n`, or
/// `KEY\n<64-bit little-endian length><value>\n`.
fn journal_fields(d: &[u8]) -> Vec<(String, String)> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let end = d[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(d.len(), |p| i + p);
        let line = &d[i..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((lossy(&line[..eq]), lossy(&line[eq + 1..])));
            i = end + 1;
        } else {
            let Some(len) = d.get(end + 1..end + 9) else {
                break;
            };
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
            let start = end + 9;
            let stop = usize::try_from(len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .map_or(d.len(), |s| s.min(d.len()));
            fields.push((lossy(line), lossy(&d[start..stop])));
            i = stop + 1;
        }
    }
    fields
}

impl ManagerLog {
    fn listen(socket: &Path) -> ManagerLog {
        let sock = UnixDatagram::bind(socket).expect("bind the manager's journal socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lines, stop) = (Arc::clone(&lines), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let fields = journal_fields(&buf[..n]);
                    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
                    if let Some(message) = get("MESSAGE") {
                        let priority = get("PRIORITY").map_or("?", |p| p.as_str());
                        if let Ok(mut lines) = lines.lock() {
                            lines.push(format!("<{priority}> {message}"));
                        }
                    }
                }
            })
        };
        ManagerLog {
            lines,
            stop,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for ManagerLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a command for cleanup: bounded, never panicking; true on success.
fn cleanup_run(cmd: &mut Command, limit: Duration) -> bool {
    let Ok(mut child) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if t.elapsed() < limit => sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill(); // our own child, by PID
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Every directory of a cgroup tree, deepest first.
fn cgroup_dirs_deepest_first(top: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    if top.is_dir() {
        walk(top, &mut out);
    }
    out
}

/// PIDs in a cgroup tree.
fn cgroup_pids(top: &Path) -> Vec<i32> {
    cgroup_dirs_deepest_first(top)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// A private `systemd --user`, started by this test in a mount namespace
/// and cgroups of its own, its XDG dirs (and HOME) in a temp dir.
pub(super) struct UserManager {
    child: Option<Child>,
    cgroups: Vec<PathBuf>,
    log: Option<ManagerLog>,
    // Last: removed once the manager is gone.
    dir: Option<tempfile::TempDir>,
}

static MANAGERS: AtomicU32 = AtomicU32::new(0);

impl UserManager {
    /// Boots it and waits until it runs. Mount what its units need first:
    /// its mount namespace is a private copy made at boot.
    pub(super) fn boot() -> UserManager {
        assert!(
            Path::new("/run/systemd").is_dir(),
            "/run/systemd is missing: install systemd"
        );
        let dir = tempdir();
        // World-traversable, so that another user reaches the control
        // socket and the socket's own mode (or the service) refuses them.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let mut me = UserManager {
            child: None,
            cgroups: Vec::new(),
            log: None,
            dir: Some(dir),
        };
        let base = me.path().to_path_buf();
        for d in [
            "run",
            "config/systemd/user",
            "home",
            "state",
            "cache",
            "data",
            "journal",
        ] {
            fs::create_dir_all(base.join(d)).expect("create manager dir");
        }
        fs::set_permissions(base.join("run"), fs::Permissions::from_mode(0o755))
            .expect("chmod run");
        make_inaccessible_nodes(&base.join("inaccessible"));
        me.log = Some(ManagerLog::listen(&base.join("journal/socket")));

        let name = format!(
            "defragd-test-{}-{}",
            std::process::id(),
            MANAGERS.fetch_add(1, Ordering::Relaxed)
        );
        for h in cgroup_hierarchies() {
            let cg = h.join(&name);
            fs::create_dir(&cg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.display()));
            me.cgroups.push(cg);
        }

        let quote = |p: &Path| {
            let s = p.to_string_lossy().into_owned();
            assert!(!s.contains('\''), "{s} has a quote");
            format!("'{s}'")
        };
        let script = base.join("boot.sh");
        fs::write(
            &script,
            format!(
                "# Run as: unshare --mount --propagation slave /bin/sh boot.sh CGROUP...\n\
                 set -e\n\
                 mount -t tmpfs -o mode=755 defragd-test-run-systemd /run/systemd\n\
                 # \"Booted with systemd\", PID 1's inaccessible nodes, and a\n\
                 # journal socket that is really the test's listener.\n\
                 mkdir -p /run/systemd/system /run/systemd/inaccessible /run/systemd/journal\n\
                 mount --bind {} /run/systemd/inaccessible\n\
                 mount --bind {} /run/systemd/journal\n\
                 for cg in \"$@\"; do echo $$ > \"$cg/cgroup.procs\"; done\n\
                 exec {} --user\n",
                quote(&base.join("inaccessible")),
                quote(&base.join("journal")),
                systemd_binary(),
            ),
        )
        .expect("write boot.sh");
        let out = fs::File::create(base.join("manager.out")).expect("create manager.out");
        let err = out.try_clone().expect("dup manager.out");
        let child = Command::new("unshare")
            // slave, not private: unmounts on the host reach the manager's
            // namespace, so it never keeps another test's filesystem
            // mounted; its own mounts stay inside.
            .args(["--mount", "--propagation", "slave", "/bin/sh"])
            .arg(&script)
            .args(&me.cgroups)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", base.join("home"))
            .env("XDG_RUNTIME_DIR", base.join("run"))
            .env("XDG_CONFIG_HOME", base.join("config"))
            .env("XDG_STATE_HOME", base.join("state"))
            .env("XDG_CACHE_HOME", base.join("cache"))
            .env("XDG_DATA_HOME", base.join("data"))
            .env("SYSTEMD_LOG_TARGET", "journal")
            .env("SYSTEMD_LOG_LEVEL", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start unshare ... systemd --user");
        let pid = child.id();
        me.child = Some(child);
        let t = Instant::now();
        wait_for("the user manager to run", Duration::from_secs(15), || {
            if let Some(Ok(Some(st))) = me.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the user manager exited ({st}):\n{}\n{}",
                    fs::read_to_string(base.join("manager.out")).unwrap_or_default(),
                    me.log_text()
                );
            }
            // Not `is-system-running`: systemctl runs outside the manager's
            // namespace, where /run/systemd/system does not exist, and says
            // "offline" then.
            let out = me.systemctl(&["show", "--property=SystemState"]);
            let state = stdout(&out);
            ["SystemState=running", "SystemState=degraded"]
                .contains(&state.trim())
                .then_some(())
        });
        eprintln!(
            "user manager pid {pid} running after {:.2}s in cgroups {:?}",
            t.elapsed().as_secs_f64(),
            me.cgroups
        );
        me
    }

    pub(super) fn path(&self) -> &Path {
        self.dir.as_ref().expect("manager dir").path()
    }

    pub(super) fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    pub(super) fn unit_dir(&self) -> PathBuf {
        self.path().join("config/systemd/user")
    }

    /// The v1 devices cgroup the manager was put in, if any.
    pub(super) fn devices_cgroup(&self) -> Option<&Path> {
        self.cgroups
            .iter()
            .find(|p| p.parent().is_some_and(|h| h.ends_with("devices")))
            .map(PathBuf::as_path)
    }

    pub(super) fn log_text(&self) -> String {
        self.log.as_ref().map(ManagerLog::text).unwrap_or_default()
    }

    pub(super) fn systemctl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("systemctl");
        cmd.arg("--user")
            .arg("--no-pager")
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("SYSTEMD_COLORS", "0");
        cmd
    }

    pub(super) fn systemctl(&self, args: &[&str]) -> Output {
        run_timed(&mut self.systemctl_cmd(args), CALL_LIMIT).0
    }

    pub(super) fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl --user {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            text(&out)
        );
        stdout(&out)
    }

    pub(super) fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
        let out = self.systemctl_ok(&["show", unit, &format!("--property={}", props.join(","))]);
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the user manager's log (last 60 lines) ---\n{}\n---",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        // 1. Ask the manager to stop its units and exit; kill it (by its
        //    PID) if it does not go.
        if let Some(mut child) = self.child.take() {
            cleanup_run(&mut self.systemctl_cmd(&["exit"]), Duration::from_secs(20));
            let t = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(20) {
                sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "the user manager (pid {}) did not exit; killing it",
                    child.id()
                );
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // 2. Kill, by PID, whatever it left in the test's cgroups: processes
        //    it started for this test.
        let t = Instant::now();
        loop {
            let pids: Vec<i32> = self.cgroups.iter().flat_map(|c| cgroup_pids(c)).collect();
            if pids.is_empty() || t.elapsed() > Duration::from_secs(10) {
                if !pids.is_empty() {
                    eprintln!("processes {pids:?} outlived SIGKILL in the test's cgroups");
                }
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions; the PID
                // was just read from a cgroup only this test's manager uses.
                unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) };
            }
            sleep(Duration::from_millis(100));
        }
        // 3. Remove the cgroups, deepest first (a just-emptied cgroup can be
        //    busy for a moment).
        for top in &self.cgroups {
            for dir in cgroup_dirs_deepest_first(top) {
                let mut tries = 0;
                while let Err(e) = fs::remove_dir(&dir) {
                    tries += 1;
                    if tries > 50 {
                        eprintln!("cannot remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    sleep(Duration::from_millis(100));
                }
            }
        }
        // 4. The log listener, then the temp dir (the logs were printed).
        drop(self.log.take());
        drop(self.dir.take());
    }
}
