//! The systemd integration of the real unit, systemd/defragd.service:
//!
//! 1. `verify`: `systemd-analyze verify` has nothing to say about it,
//!    installed the way `make install` installs it (paths rewritten, man
//!    pages in place).
//! 2. `unit_lifecycle`: a real systemd runs it: a private user manager
//!    (`systemd --user`) in a mount namespace and cgroups of the test's own,
//!    so PID 1 need not be systemd (/work/shared/TESTING.md, "A real
//!    systemd"). `start` returns after READY=1, STATUS= shows, `reload`
//!    applies a good config and refuses a bad one, `stop` is clean, the
//!    watchdog kills and restarts a hung main loop, and a bad config at
//!    start fails with 78 and is not restarted.
//! 3. `defragctl`: defragctl drives the service that systemd runs, and
//!    refuses a non-root peer.
//!
//! `user_manager` boots the private manager of parts 2 and 3 and
//! `installed_service` installs the unit into it.
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

mod defragctl;
mod installed_service;
mod unit_lifecycle;
mod user_manager;
mod verify;

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
