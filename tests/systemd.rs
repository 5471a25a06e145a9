//! The systemd integration of the real unit, systemd/defragd.service:
//!
//! 1. `systemd-analyze verify` has nothing to say about it, installed the way
//!    `make install` installs it (paths rewritten, man pages in place).
//! 2. A real systemd runs it: a private user manager (`systemd --user`) in a
//!    mount namespace and cgroups of the test's own, so PID 1 need not be
//!    systemd (/work/shared/TESTING.md, "A real systemd"). `start` returns
//!    after READY=1, STATUS= shows, `reload` applies a good config and
//!    refuses a bad one, `stop` is clean, the watchdog kills and restarts a
//!    hung main loop, and a bad config at start fails with 78 and is not
//!    restarted.
//! 3. defragctl drives the service that systemd runs, and refuses a
//!    non-root peer.
//!
//! The unit runs as written, sandboxing included; a drop-in adds only what a
//! user manager without journald needs (see `USER_MANAGER_DROP_IN`).
//!
//! Root only (mounts, loop devices, cgroups). What a test starts or makes is
//! undone by a guard's Drop, also on failure: the manager is asked to exit
//! (else killed by its PID), anything left in the test's cgroups is killed
//! by PID, the cgroups are removed deepest first; the tmpfs on /run/systemd
//! only ever exists in the manager's own mount namespace.

use defragd_testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    filefrag_extents, fragment_free_space, md5, require_root, run_timed, strip_ansi, tempdir,
    write_seeded_file, ImageSpec, LoopImage, ServiceConfig, MIB,
};

const UNIT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/defragd.service");
const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/defragd.toml");
const DEFRAGD: &str = env!("CARGO_BIN_EXE_defragd");
const DEFRAGCTL: &str = env!("CARGO_BIN_EXE_defragctl");

/// The longest any systemctl, systemd-analyze or defragctl call may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// The tests that boot a manager take turns, so that each manager sees only
/// its own test's image mounted (the namespaces are slaves of the host's,
/// so an unmount reaches them, but a mount made by the other test would too).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `probe` every 100 ms until it gives a value; fails the test at
/// `timeout` (the guards then print the service's and the manager's logs).
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        sleep(Duration::from_millis(100));
    }
}

/// The unit as `make install` installs it: the Makefile's
/// `sed 's|/usr/local/bin/|$(BINDIR)/|g; s|/etc/defragd/|$(CONFDIR)/|g'`,
/// with BINDIR the directory of the binaries under test.
fn installed_unit(conf_dir: &Path) -> String {
    let unit = fs::read_to_string(UNIT_FILE).expect("read systemd/defragd.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/defragd --config /etc/defragd/defragd.toml"),
        "systemd/defragd.service no longer starts /usr/local/bin/defragd --config \
         /etc/defragd/defragd.toml: update this test's path rewriting"
    );
    let bin_dir = Path::new(DEFRAGD).parent().expect("the binary's directory");
    unit.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))
        .replace("/etc/defragd/", &format!("{}/", conf_dir.display()))
}

/// Runs `systemd-analyze ARGS` in a mount namespace of its own with a
/// tmpfs on /run/systemd: as root, `verify` touches
/// /run/systemd/systemd-units-load, which belongs to the host's PID 1.
fn systemd_analyze(args: &[&Path], dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "slave", "/bin/sh", "-c"])
        .arg("mount -t tmpfs -o mode=755 defragd-test-analyze /run/systemd && exec systemd-analyze \"$@\"")
        .arg("sh")
        .args(args)
        .current_dir(dir)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_timed(&mut cmd, CALL_LIMIT).0
}

#[test]
fn systemd_analyze_verify_says_nothing_about_the_installed_unit() {
    if !require_root() {
        return;
    }
    assert!(
        Path::new("/run/systemd").is_dir(),
        "/run/systemd is missing: install systemd (these tests use systemd-analyze and systemd --user)"
    );
    let tmp = tempdir();
    let dir = tmp.path();

    // The man pages named by Documentation=, where `make install` puts
    // them: MANDIR is .../man8.
    let docs = dir.join("docs");
    for bin in [DEFRAGD, DEFRAGCTL] {
        let out = run_timed(
            Command::new(bin).arg("generate-docs").arg(&docs),
            CALL_LIMIT,
        )
        .0;
        assert!(out.status.success(), "{bin} generate-docs: {}", text(&out));
    }
    let manpath = dir.join("man");
    fs::create_dir_all(manpath.join("man8")).expect("create man8");
    let mut pages = Vec::new();
    for entry in fs::read_dir(&docs).expect("read docs") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "8") {
            let name = path.file_name().expect("page name").to_owned();
            fs::copy(&path, manpath.join("man8").join(&name)).expect("copy man page");
            pages.push(name.to_string_lossy().into_owned());
        }
    }
    pages.sort();
    eprintln!("man pages: {}", pages.join(" "));
    for page in ["defragd.8", "defragctl.8"] {
        assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }

    let conf_dir = dir.join("etc");
    fs::create_dir_all(&conf_dir).expect("create etc");
    fs::copy(DEFAULT_CONFIG, conf_dir.join("defragd.toml")).expect("copy the default config");
    let unit = dir.join("defragd.service");
    fs::write(&unit, installed_unit(&conf_dir)).expect("write unit");

    let out = systemd_analyze(&[Path::new("verify"), &unit], dir, &[("MANPATH", &manpath)]);
    let said = text(&out);
    assert!(
        said.is_empty(),
        "systemd-analyze verify of the installed unit said ({}):\n{said}",
        out.status
    );

    // The check is not vacuous: verify does report a bad directive and a
    // missing man page (it exits 0 for some errors, so its words count).
    let bad = dir.join("bad").join("defragd.service");
    fs::create_dir_all(bad.parent().expect("dir")).expect("create dir");
    fs::write(
        &bad,
        installed_unit(&conf_dir).replace("[Service]\n", "[Service]\nNoSuchDirective=yes\n"),
    )
    .expect("write bad unit");
    let out = systemd_analyze(&[Path::new("verify"), &bad], dir, &[("MANPATH", &manpath)]);
    assert!(text(&out).contains("NoSuchDirective"), "{}", text(&out));
    let empty = dir.join("no-man");
    fs::create_dir_all(&empty).expect("create dir");
    let out = systemd_analyze(&[Path::new("verify"), &unit], dir, &[("MANPATH", &empty)]);
    assert!(text(&out).contains("man defragd(8)"), "{}", text(&out));

    // For the record: systemd's own exposure score of the unit.
    let out = systemd_analyze(
        &[
            Path::new("security"),
            Path::new("--offline=true"),
            Path::new(UNIT_FILE),
        ],
        dir,
        &[],
    );
    let security = stdout(&out);
    eprintln!(
        "systemd-analyze security --offline=true systemd/defragd.service | tail -1:\n{}",
        security.lines().last().unwrap_or("(nothing)")
    );
}

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
const USER_MANAGER_DROP_IN: &str = "\
# Added by tests/systemd.rs for a private user manager.
[Service]
# There is no journald here: the output goes to a file the test reads.
StandardOutput=append:LOG
StandardError=append:LOG
";

/// For the watchdog test only: the main loop hangs 3 s after start and the
/// watchdog is 4 s, so the kill comes within seconds.
const WATCHDOG_DROP_IN: &str = "\
# Added by tests/systemd.rs for the watchdog test.
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
const HOLDER: &str = "defragd-test-holder.service";
const HOLDER_UNIT: &str = "\
[Unit]
Description=Keeps defragd.service loaded for tests/systemd.rs
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
struct UserManager {
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
    fn boot() -> UserManager {
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

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("manager dir").path()
    }

    fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    fn unit_dir(&self) -> PathBuf {
        self.path().join("config/systemd/user")
    }

    /// The v1 devices cgroup the manager was put in, if any.
    fn devices_cgroup(&self) -> Option<&Path> {
        self.cgroups
            .iter()
            .find(|p| p.parent().is_some_and(|h| h.ends_with("devices")))
            .map(PathBuf::as_path)
    }

    fn log_text(&self) -> String {
        self.log.as_ref().map(ManagerLog::text).unwrap_or_default()
    }

    fn systemctl_cmd(&self, args: &[&str]) -> Command {
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

    fn systemctl(&self, args: &[&str]) -> Output {
        run_timed(&mut self.systemctl_cmd(args), CALL_LIMIT).0
    }

    fn systemctl_ok(&self, args: &[&str]) -> String {
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

    fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
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

/// defragd.service installed into a user manager, with its config, its log
/// file and its control socket.
struct Defragd<'m> {
    mgr: &'m UserManager,
    config: PathBuf,
    log: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
}

impl<'m> Defragd<'m> {
    /// Installs the unit (as `make install` would, plus the user-manager
    /// drop-in) and `cfg` as its config, the store in `state_dir`, the
    /// control socket in the unit's RuntimeDirectory as in the shipped
    /// config; starts the holder unit.
    fn install(mgr: &'m UserManager, cfg: &ServiceConfig, state_dir: &Path) -> Defragd<'m> {
        let conf_dir = mgr.path().join("etc/defragd");
        fs::create_dir_all(&conf_dir).expect("create etc/defragd");
        let me = Defragd {
            mgr,
            config: conf_dir.join("defragd.toml"),
            log: mgr.path().join("defragd.log"),
            // RuntimeDirectory=defragd is $XDG_RUNTIME_DIR/defragd here.
            socket: mgr.runtime_dir().join("defragd/control.sock"),
            state_dir: state_dir.to_path_buf(),
        };
        me.write_config(cfg);
        let units = mgr.unit_dir();
        fs::write(units.join("defragd.service"), installed_unit(&conf_dir))
            .expect("install the unit");
        let drop_ins = units.join("defragd.service.d");
        fs::create_dir_all(&drop_ins).expect("create drop-in dir");
        fs::write(
            drop_ins.join("10-user-manager.conf"),
            USER_MANAGER_DROP_IN.replace("LOG", &me.log.to_string_lossy()),
        )
        .expect("write drop-in");
        fs::write(units.join(HOLDER), HOLDER_UNIT).expect("write holder unit");
        mgr.systemctl_ok(&["daemon-reload"]);
        mgr.systemctl_ok(&["start", HOLDER]);
        let load = me.show(&["LoadState", "LoadError"]);
        assert_eq!(load["LoadState"], "loaded", "{load:?}");
        me
    }

    fn write_config(&self, cfg: &ServiceConfig) {
        fs::write(&self.config, cfg.to_toml(&self.state_dir, &self.socket)).expect("write config");
    }

    fn show(&self, props: &[&str]) -> BTreeMap<String, String> {
        self.mgr.show("defragd.service", props)
    }

    fn prop(&self, prop: &str) -> String {
        self.show(&[prop]).remove(prop).unwrap_or_default()
    }

    fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.log).unwrap_or_default(),
        ))
    }

    fn count(&self, pattern: &str) -> usize {
        self.log().lines().filter(|l| l.contains(pattern)).count()
    }

    /// Waits until the log has more than `before` lines with `pattern`.
    fn wait_for_log(&self, pattern: &str, before: usize, timeout: Duration) {
        wait_for(&format!("log line {pattern:?}"), timeout, || {
            (self.count(pattern) > before).then_some(())
        });
    }

    fn defragctl(&self, args: &[&str]) -> Output {
        run_timed(
            Command::new(DEFRAGCTL)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
            CALL_LIMIT,
        )
        .0
    }

    fn defragctl_ok(&self, args: &[&str]) -> String {
        let out = self.defragctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "defragctl {}:\n{}",
            args.join(" "),
            text(&out)
        );
        stdout(&out)
    }

    fn defragctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.defragctl_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("defragctl {args:?}: {e}:\n{out}"))
    }

    /// defragctl as `nobody` (setpriv, from util-linux).
    fn defragctl_as_nobody(&self, args: &[&str]) -> Output {
        run_timed(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(DEFRAGCTL)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
            CALL_LIMIT,
        )
        .0
    }
}

impl Drop for Defragd<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- defragd's log (last 40 lines) ---\n{}\n---",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// A config for these tests: `ServiceConfig`'s test defaults serving
/// `mount_point`, with a short quiet period.
fn config_for(mount_point: &Path) -> ServiceConfig {
    let mut cfg = ServiceConfig::new(mount_point, &[]);
    cfg.quiet_period = "1s".into();
    cfg
}

const RELOAD_FAILED: &str =
    "the last reload failed (see the log); running on the previous configuration";

#[test]
fn a_real_systemd_runs_the_unit() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let img = LoopImage::create(ImageSpec::ext4(64));
    let mgr = UserManager::boot();
    let mut cfg = config_for(img.root());
    cfg.max_mib_per_s = 64;
    let svc = Defragd::install(&mgr, &cfg, &img.root().join("defragd-state"));

    // start returns once READY=1 came (with its STATUS=).
    let t = Instant::now();
    mgr.systemctl_ok(&["start", "defragd"]);
    let took = t.elapsed();
    let s = svc.show(&["ActiveState", "SubState", "MainPID", "StatusText"]);
    eprintln!("start took {:.2}s: {s:?}", took.as_secs_f64());
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running"),
        "{s:?}"
    );
    assert!(
        s["StatusText"].contains("queued"),
        "READY=1 came without STATUS=: {s:?}"
    );
    let pid = s["MainPID"].clone();
    assert_ne!(pid, "0");
    let covering = format!("covering {}", img.root().display());
    svc.wait_for_log(&covering, 0, Duration::from_secs(5));

    // Under DevicePolicy=closed (enforced where the devices hierarchy is
    // delegated), the loop devices are readable, and not every device is.
    if let Some(devices) = mgr.devices_cgroup() {
        let cg = svc.prop("ControlGroup");
        let rel = cg.strip_prefix('/').unwrap_or(&cg);
        let hierarchy = devices.parent().expect("hierarchy");
        let list = fs::read_to_string(hierarchy.join(rel).join("devices.list"))
            .expect("read the service's devices.list");
        let rdev = fs::metadata(img.device().expect("loop device"))
            .expect("stat loop device")
            .rdev();
        let major = nix::sys::stat::major(rdev);
        eprintln!("the service's devices.list: {}", list.replace('\n', ", "));
        assert!(
            !list.contains("a *:*"),
            "DevicePolicy is not applied: {list}"
        );
        assert!(
            list.lines()
                .any(|l| l == format!("b {major}:* r") || l == "b *:* r"),
            "no read access to the loop devices (major {major}): {list}"
        );
        assert!(
            !list.lines().any(|l| (l.starts_with("b *:*")
                || l.starts_with(&format!("b {major}:")))
                && l.contains('w')),
            "block devices must be read-only for the service: {list}"
        );
    } else {
        eprintln!("no v1 devices hierarchy: DevicePolicy=/DeviceAllow= are BPF rules here");
    }

    // status shows the STATUS= text.
    let status = mgr.systemctl_ok(&["status", "defragd"]);
    eprintln!("{status}");
    let status_line = status
        .lines()
        .find(|l| l.trim_start().starts_with("Status: \""))
        .unwrap_or_else(|| panic!("no Status: line in systemctl status:\n{status}"));
    assert!(
        ["idle", "moving", "defragmenting", "checking", "crawling"]
            .iter()
            .any(|w| status_line.contains(w))
            && status_line.contains("queued"),
        "{status_line}"
    );

    // reload applies a changed config: the crawl interval shows in the
    // status line ("next crawl in ...") once the first pass is done.
    let before = wait_for("the first crawl pass", Duration::from_secs(15), || {
        let st = svc.prop("StatusText");
        st.contains("next crawl in").then_some(st)
    });
    assert!(!before.contains("next crawl in 1h"), "{before}");
    let reloads = svc.count("configuration reloaded");
    cfg.max_mib_per_s = 32;
    cfg.crawl_interval = "2h".into();
    svc.write_config(&cfg);
    let t = Instant::now();
    mgr.systemctl_ok(&["reload", "defragd"]);
    svc.wait_for_log("configuration reloaded", reloads, Duration::from_secs(10));
    let after = wait_for(
        "the new crawl interval in STATUS=",
        Duration::from_secs(10),
        || {
            let st = svc.prop("StatusText");
            st.contains("next crawl in 1h").then_some(st)
        },
    );
    eprintln!(
        "reload applied within {:.2}s: {before:?} -> {after:?}",
        t.elapsed().as_secs_f64()
    );

    // A bad config on reload is refused: the service stays, on the
    // previous config, and its status says so.
    let refusals = svc.count("the new configuration is not valid");
    cfg.max_mib_per_s = 0;
    svc.write_config(&cfg);
    let out = mgr.systemctl(&["reload", "defragd"]);
    eprintln!("systemctl reload with a bad config: {}", out.status);
    svc.wait_for_log(
        "the new configuration is not valid",
        refusals,
        Duration::from_secs(10),
    );
    assert!(svc.log().contains("throttle.max_mib_per_s = 0"));
    let failed = wait_for(
        "STATUS= to say the reload failed",
        Duration::from_secs(10),
        || {
            let st = svc.prop("StatusText");
            st.ends_with(RELOAD_FAILED).then_some(st)
        },
    );
    assert!(failed.contains("next crawl in 1h"), "{failed}");
    let s = svc.show(&["ActiveState", "SubState", "MainPID"]);
    assert_eq!(
        (
            s["ActiveState"].as_str(),
            s["SubState"].as_str(),
            &s["MainPID"]
        ),
        ("active", "running", &pid),
        "{s:?}"
    );
    // A good config again clears the note.
    cfg.max_mib_per_s = 64;
    svc.write_config(&cfg);
    let reloads = svc.count("configuration reloaded");
    mgr.systemctl_ok(&["reload", "defragd"]);
    svc.wait_for_log("configuration reloaded", reloads, Duration::from_secs(10));
    wait_for(
        "STATUS= without the failed reload",
        Duration::from_secs(10),
        || (!svc.prop("StatusText").contains(RELOAD_FAILED)).then_some(()),
    );

    // stop: clean and quick.
    let t = Instant::now();
    mgr.systemctl_ok(&["stop", "defragd"]);
    let took = t.elapsed();
    let s = svc.show(&["ActiveState", "Result", "ExecMainCode", "ExecMainStatus"]);
    eprintln!("stop took {:.2}s: {s:?}", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert_eq!(s["ActiveState"], "inactive", "{s:?}");
    assert_eq!(s["Result"], "success", "{s:?}");
    assert_eq!(
        s["ExecMainCode"], "1",
        "not a normal exit (CLD_EXITED): {s:?}"
    );
    assert_eq!(s["ExecMainStatus"], "0", "{s:?}");
    assert!(svc
        .log()
        .lines()
        .last()
        .is_some_and(|l| l.contains("stopped")));

    // A bad config at start: exit status 78, and no restart.
    cfg.max_mib_per_s = 0;
    svc.write_config(&cfg);
    let out = mgr.systemctl(&["start", "defragd"]);
    assert!(!out.status.success(), "start with a bad config succeeded");
    let props = [
        "ActiveState",
        "SubState",
        "Result",
        "ExecMainCode",
        "ExecMainStatus",
        "NRestarts",
        "RestartUSec",
    ];
    let s = svc.show(&props);
    eprintln!("start with a bad config: {s:?}");
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("failed", "failed"),
        "a restart is scheduled (auto-restart) or it still runs: {s:?}"
    );
    assert_eq!(s["Result"], "exit-code", "{s:?}");
    assert_eq!(s["ExecMainStatus"], "78", "{s:?}");
    assert_eq!(s["NRestarts"], "0", "{s:?}");
    assert!(svc.log().contains("throttle.max_mib_per_s = 0"));
    // Past RestartSec= it is still failed, never restarted.
    let restart_sec = humantime::parse_duration(&s["RestartUSec"])
        .unwrap_or_else(|e| panic!("RestartUSec={}: {e}", s["RestartUSec"]));
    sleep(restart_sec.min(Duration::from_secs(20)) + Duration::from_millis(1500));
    let s = svc.show(&props);
    assert_eq!(
        (s["ActiveState"].as_str(), s["NRestarts"].as_str()),
        ("failed", "0"),
        "{s:?}"
    );
    mgr.systemctl_ok(&["reset-failed", "defragd"]);

    // The watchdog: a main loop that hangs is killed and restarted.
    cfg.max_mib_per_s = 64;
    svc.write_config(&cfg);
    let drop_in = mgr.unit_dir().join("defragd.service.d/50-watchdog.conf");
    fs::write(&drop_in, WATCHDOG_DROP_IN).expect("write watchdog drop-in");
    mgr.systemctl_ok(&["daemon-reload"]);
    let t = Instant::now();
    mgr.systemctl_ok(&["start", "defragd"]);
    let first_pid = svc.prop("MainPID");
    let mut killed_after = None;
    let props = ["ActiveState", "SubState", "Result", "NRestarts", "MainPID"];
    let s = wait_for("a watchdog restart", Duration::from_secs(40), || {
        let s = svc.show(&props);
        if s["Result"] == "watchdog" && killed_after.is_none() {
            killed_after = Some(t.elapsed());
        }
        let restarted = s["NRestarts"].parse::<u32>().unwrap_or(0) >= 1
            && s["ActiveState"] == "active"
            && s["SubState"] == "running";
        restarted.then_some(s)
    });
    eprintln!(
        "watchdog: killed after {:.1}s, running again after {:.1}s: {s:?}",
        killed_after.map_or(f64::NAN, |d| d.as_secs_f64()),
        t.elapsed().as_secs_f64()
    );
    assert!(killed_after.is_some(), "never saw Result=watchdog");
    assert_ne!(s["MainPID"], first_pid, "{s:?}");
    assert!(svc.count("the main loop hangs now") >= 1);
    assert!(
        mgr.log_text().contains("Watchdog timeout"),
        "the manager did not log a watchdog timeout"
    );
    mgr.systemctl_ok(&["stop", "defragd"]);
    fs::remove_file(&drop_in).expect("remove watchdog drop-in");
    mgr.systemctl_ok(&["daemon-reload"]);
}

/// A file of `size` bytes in many extents, `DIR/file.bin` under `root`,
/// with contiguous free space beside it (as `build_fixture` makes its
/// files: the directory is made once free space is fragmented, so that
/// ext4's allocator puts it among the holes).
fn fragmented_file(root: &Path, dir: &str, size: u64, seed: u64) -> PathBuf {
    let filler = fragment_free_space(root, 2 * MIB);
    fs::create_dir_all(root.join(dir)).expect("create dir");
    let path = root.join(dir).join("file.bin");
    write_seeded_file(&path, size, seed);
    let extents = filefrag_extents(&path);
    assert!(
        extents > 30,
        "{} has only {extents} extents",
        path.display()
    );
    filler.delete_all(root);
    path
}

/// The history entry of `path`, if any.
fn history_entry(svc: &Defragd, path: &Path) -> Option<serde_json::Value> {
    let json = svc.defragctl_json(&["history"]);
    json.as_array()?
        .iter()
        .find(|e| e["path"].as_str() == Some(&*path.to_string_lossy()))
        .cloned()
}

/// Fails at once, with the reason, when the log shows that the sandbox
/// denied a system call.
fn fail_on_denied_syscalls(svc: &Defragd) {
    let log = svc.log();
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("ENOSYS: ") || l.contains("EPERM: "))
    {
        let hint = if line.contains("ENOSYS") {
            "\n(systemd answers openat2 with ENOSYS under RestrictSUIDSGID=yes: seccomp \
             cannot inspect the mode in its struct open_how)"
        } else {
            ""
        };
        panic!("the sandbox denies defragd a system call: {line}{hint}");
    }
}

#[test]
fn defragctl_drives_the_service_systemd_runs() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    // A fragmented file for the crawl to find (written before the manager
    // boots, so the image can still be settled: see LoopImage::settle).
    let crawled = fragmented_file(&root, "crawled", 8 * MIB, 0xc4a1);
    img.settle();
    let crawled_extents = filefrag_extents(&crawled);
    sleep(Duration::from_millis(1100)); // past the quiet period

    let mgr = UserManager::boot();
    let mut cfg = config_for(&root);
    cfg.log_level = "debug".into(); // the crawl's failures are debug lines
    let svc = Defragd::install(&mgr, &cfg, &root.join("defragd-state"));
    mgr.systemctl_ok(&["start", "defragd"]);

    // The crawl finds the file and a worker moves it, all under the unit's
    // sandbox.
    let t = Instant::now();
    let entry = wait_for(
        "the crawl's move in the history",
        Duration::from_secs(30),
        || {
            fail_on_denied_syscalls(&svc);
            history_entry(&svc, &crawled)
        },
    );
    eprintln!(
        "crawled and moved within {:.1}s of start: {entry}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(entry["outcome"], "defragmented", "{entry}");
    assert_eq!(entry["extents_before"], crawled_extents, "{entry}");
    assert!(filefrag_extents(&crawled) < crawled_extents / 4);
    wait_for("the first crawl pass", Duration::from_secs(15), || {
        svc.prop("StatusText")
            .contains("next crawl in")
            .then_some(())
    });

    // status, for people and for scripts.
    let human = svc.defragctl_ok(&["status"]);
    eprintln!("defragctl status:\n{human}");
    let first = human.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("idle") && first.contains("queued"),
        "{human}"
    );
    assert!(human.lines().any(|l| l == "state        idle"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("filesystems") && l.contains(&*root.to_string_lossy())),
        "{human}"
    );
    let json = svc.defragctl_json(&["status"]);
    assert_eq!(json["state"], "idle", "{json}");
    assert_eq!(json["queued"], 0, "{json}");
    assert_eq!(json["bytes_moved_today"], 8 * MIB, "{json}");
    assert_eq!(
        json["filesystems"][0]["mount_point"].as_str(),
        Some(&*root.to_string_lossy()),
        "{json}"
    );
    // The unit's sandbox leaves fanotify what it needs (CAP_SYS_ADMIN and
    // its three syscalls): writes are tracked on the whole filesystem.
    assert_eq!(json["filesystems"][0]["tracking"], "fanotify", "{json}");
    assert!(
        svc.prop("StatusText")
            .contains("writes tracked on 1 whole filesystem"),
        "{}",
        svc.prop("StatusText")
    );

    // pause: the status says so, for defragctl and for systemd.
    let said = svc.defragctl_ok(&["pause"]);
    assert!(said.starts_with("paused"), "{said}");
    assert_eq!(svc.defragctl_json(&["status"])["state"], "paused");
    let human = svc.defragctl_ok(&["status"]);
    assert!(human.contains("paused until resumed"), "{human}");
    wait_for("STATUS= to say paused", Duration::from_secs(5), || {
        svc.prop("StatusText")
            .starts_with("paused by operator")
            .then_some(())
    });

    // A fragmented file, queued by hand: while paused it stays queued and
    // unmoved. (No settle now: the manager's namespace has its own copy of
    // the mount; the pause gives ext4 the seconds it needs instead.)
    let file = fragmented_file(&root, "queued", 16 * MIB, 0x5eed);
    let extents = filefrag_extents(&file);
    let sum = md5(&file);
    sleep(Duration::from_millis(1100)); // past the quiet period
    let out = svc.defragctl(&["defrag", &file.to_string_lossy()]);
    fail_on_denied_syscalls(&svc);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).starts_with("queued"), "{}", text(&out));
    let queue = svc.defragctl_ok(&["queue"]);
    eprintln!("defragctl queue:\n{queue}");
    assert!(queue.contains(&*file.to_string_lossy()), "{queue}");
    let json = svc.defragctl_json(&["queue"]);
    assert_eq!(
        json[0]["path"].as_str(),
        Some(&*file.to_string_lossy()),
        "{json}"
    );
    assert_eq!(json[0]["extents"], extents, "{json}");
    sleep(Duration::from_secs(2));
    assert_eq!(filefrag_extents(&file), extents, "moved while paused");
    assert_eq!(
        svc.defragctl_json(&["queue"]).as_array().map(Vec::len),
        Some(1)
    );
    assert!(history_entry(&svc, &file).is_none());

    // resume: it is moved, and history says so.
    assert_eq!(svc.defragctl_ok(&["resume"]).trim(), "resumed");
    let t = Instant::now();
    let entry = wait_for("the move in the history", Duration::from_secs(30), || {
        history_entry(&svc, &file)
    });
    eprintln!(
        "moved within {:.1}s of resume: {entry}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(entry["outcome"], "defragmented", "{entry}");
    let after = filefrag_extents(&file);
    eprintln!("filefrag: {extents} -> {after} extents");
    assert!(after < extents / 4, "{extents} -> {after} extents");
    assert_eq!(md5(&file), sum, "the data changed");
    let history = svc.defragctl_ok(&["history"]);
    eprintln!("defragctl history:\n{history}");
    assert!(
        history
            .lines()
            .any(|l| l.contains("defragmented") && l.contains(&*file.to_string_lossy())),
        "{history}"
    );
    assert_eq!(svc.defragctl_ok(&["queue"]).trim(), "the queue is empty");
    let json = svc.defragctl_json(&["status"]);
    assert_eq!(json["bytes_moved_today"], 24 * MIB, "{json}");

    // reload: a good config is applied, a bad one refused (exit 1).
    let reloads = svc.count("configuration reloaded");
    cfg.max_mib_per_s = 32;
    svc.write_config(&cfg);
    assert_eq!(
        svc.defragctl_ok(&["reload"]).trim(),
        "configuration reloaded"
    );
    svc.wait_for_log("configuration reloaded", reloads, Duration::from_secs(5));
    cfg.max_mib_per_s = 0;
    svc.write_config(&cfg);
    let out = svc.defragctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("throttle.max_mib_per_s = 0"),
        "{}",
        text(&out)
    );
    let s = svc.show(&["ActiveState", "SubState", "StatusText"]);
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    eprintln!(
        "after a refused `defragctl reload`: StatusText={:?}",
        s["StatusText"]
    );
    cfg.max_mib_per_s = 64;
    svc.write_config(&cfg);
    svc.defragctl_ok(&["reload"]);

    // A non-root peer is refused: by the socket's mode, and by the
    // service's own check when the mode would let it in.
    let sock = fs::metadata(&svc.socket).expect("stat socket");
    assert!(sock.file_type().is_socket());
    eprintln!("control socket mode {:o}", sock.mode() & 0o7777);
    let out = svc.defragctl_as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stderr(&out).contains("permission denied"), "{}", text(&out));
    fs::set_permissions(&svc.socket, fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let out = svc.defragctl_as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        "defragctl: permission denied: defragctl must run as root\n"
    );
    let out = svc.defragctl_as_nobody(&["--json", "pause"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(svc.defragctl_json(&["status"])["state"], "idle");

    let t = Instant::now();
    mgr.systemctl_ok(&["stop", "defragd"]);
    let s = svc.show(&["Result", "ExecMainStatus"]);
    eprintln!("stop took {:.2}s: {s:?}", t.elapsed().as_secs_f64());
    assert_eq!(
        (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
        ("success", "0")
    );
}
