//! Part 2: a real systemd runs the unit: `start` returns after READY=1,
//! STATUS= shows, `reload` applies a good config and refuses a bad one,
//! `stop` is clean, the watchdog kills and restarts a hung main loop, and a
//! bad config at start fails with 78 and is not restarted.

use super::installed_service::{config_for, Defragd};
use super::user_manager::{UserManager, WATCHDOG_DROP_IN};
use super::*;

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

    // One service's life, scenario by scenario: each starts where the one
    // before left the service (and its config).
    let pid = start_returns_after_ready_with_its_status(&mgr, &svc, &img);
    block_devices_are_read_only_under_device_policy(&mgr, &svc, &img);
    systemctl_status_shows_the_status_text(&mgr);
    reload_applies_a_changed_config(&mgr, &svc, &mut cfg);
    reload_refuses_a_bad_config_and_the_service_stays(&mgr, &svc, &mut cfg, &pid);
    stop_is_clean_and_quick(&mgr, &svc);
    a_bad_config_at_start_exits_78_and_is_not_restarted(&mgr, &svc, &mut cfg);
    the_watchdog_kills_and_restarts_a_hung_main_loop(&mgr, &svc, &mut cfg);
}

/// start returns once READY=1 came (with its STATUS=).
fn start_returns_after_ready_with_its_status(
    mgr: &UserManager,
    svc: &Defragd,
    img: &LoopImage,
) -> String {
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
    pid
}

/// Under DevicePolicy=closed (enforced where the devices hierarchy is
/// delegated), the loop devices are readable, and not every device is.
fn block_devices_are_read_only_under_device_policy(
    mgr: &UserManager,
    svc: &Defragd,
    img: &LoopImage,
) {
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
}

/// status shows the STATUS= text.
fn systemctl_status_shows_the_status_text(mgr: &UserManager) {
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
}

/// reload applies a changed config: the crawl interval shows in the
/// status line ("next crawl in ...") once the first pass is done.
fn reload_applies_a_changed_config(mgr: &UserManager, svc: &Defragd, cfg: &mut ServiceConfig) {
    let before = wait_for("the first crawl pass", Duration::from_secs(15), || {
        let st = svc.prop("StatusText");
        st.contains("next crawl in").then_some(st)
    });
    assert!(!before.contains("next crawl in 1h"), "{before}");
    let reloads = svc.count("configuration reloaded");
    cfg.max_mib_per_s = 32;
    cfg.crawl_interval = "2h".into();
    svc.write_config(cfg);
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
}

/// A bad config on reload is refused: the service stays, on the
/// previous config, and its status says so.
fn reload_refuses_a_bad_config_and_the_service_stays(
    mgr: &UserManager,
    svc: &Defragd,
    cfg: &mut ServiceConfig,
    pid: &str,
) {
    let refusals = svc.count("the new configuration is not valid");
    cfg.max_mib_per_s = 0;
    svc.write_config(cfg);
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
            s["MainPID"].as_str()
        ),
        ("active", "running", pid),
        "{s:?}"
    );
    // A good config again clears the note.
    cfg.max_mib_per_s = 64;
    svc.write_config(cfg);
    let reloads = svc.count("configuration reloaded");
    mgr.systemctl_ok(&["reload", "defragd"]);
    svc.wait_for_log("configuration reloaded", reloads, Duration::from_secs(10));
    wait_for(
        "STATUS= without the failed reload",
        Duration::from_secs(10),
        || (!svc.prop("StatusText").contains(RELOAD_FAILED)).then_some(()),
    );
}

/// stop: clean and quick.
fn stop_is_clean_and_quick(mgr: &UserManager, svc: &Defragd) {
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
}

/// A bad config at start: exit status 78, and no restart.
fn a_bad_config_at_start_exits_78_and_is_not_restarted(
    mgr: &UserManager,
    svc: &Defragd,
    cfg: &mut ServiceConfig,
) {
    cfg.max_mib_per_s = 0;
    svc.write_config(cfg);
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
}

/// The watchdog: a main loop that hangs is killed and restarted.
fn the_watchdog_kills_and_restarts_a_hung_main_loop(
    mgr: &UserManager,
    svc: &Defragd,
    cfg: &mut ServiceConfig,
) {
    cfg.max_mib_per_s = 64;
    svc.write_config(cfg);
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
