//! defragd.service installed into a test's user manager, for parts 2 and 3:
//! its config, its log, its control socket, and what systemd says of it.

use super::user_manager::{UserManager, HOLDER, HOLDER_UNIT, USER_MANAGER_DROP_IN};
use super::*;

/// defragd.service installed into a user manager, with its config, its log
/// file and its control socket.
pub(super) struct Defragd<'m> {
    mgr: &'m UserManager,
    config: PathBuf,
    log: PathBuf,
    pub(super) socket: PathBuf,
    state_dir: PathBuf,
}

impl<'m> Defragd<'m> {
    /// Installs the unit (as `make install` would, plus the user-manager
    /// drop-in) and `cfg` as its config, the store in `state_dir`, the
    /// control socket in the unit's RuntimeDirectory as in the shipped
    /// config; starts the holder unit.
    pub(super) fn install(
        mgr: &'m UserManager,
        cfg: &ServiceConfig,
        state_dir: &Path,
    ) -> Defragd<'m> {
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

    pub(super) fn write_config(&self, cfg: &ServiceConfig) {
        fs::write(&self.config, cfg.to_toml(&self.state_dir, &self.socket)).expect("write config");
    }

    pub(super) fn show(&self, props: &[&str]) -> BTreeMap<String, String> {
        self.mgr.show("defragd.service", props)
    }

    pub(super) fn prop(&self, prop: &str) -> String {
        self.show(&[prop]).remove(prop).unwrap_or_default()
    }

    pub(super) fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.log).unwrap_or_default(),
        ))
    }

    pub(super) fn count(&self, pattern: &str) -> usize {
        self.log().lines().filter(|l| l.contains(pattern)).count()
    }

    /// Waits until the log has more than `before` lines with `pattern`.
    pub(super) fn wait_for_log(&self, pattern: &str, before: usize, timeout: Duration) {
        wait_for(&format!("log line {pattern:?}"), timeout, || {
            (self.count(pattern) > before).then_some(())
        });
    }

    pub(super) fn defragctl(&self, args: &[&str]) -> Output {
        run_timed(
            Command::new(DEFRAGCTL)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
            CALL_LIMIT,
        )
        .0
    }

    pub(super) fn defragctl_ok(&self, args: &[&str]) -> String {
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

    pub(super) fn defragctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.defragctl_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("defragctl {args:?}: {e}:\n{out}"))
    }

    /// defragctl as `nobody` (setpriv, from util-linux).
    pub(super) fn defragctl_as_nobody(&self, args: &[&str]) -> Output {
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
pub(super) fn config_for(mount_point: &Path) -> ServiceConfig {
    let mut cfg = ServiceConfig::new(mount_point, &[]);
    cfg.quiet_period = "1s".into();
    cfg
}
