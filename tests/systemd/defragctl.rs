//! Part 3: defragctl drives the service that systemd runs, and the service
//! refuses a non-root peer.

use super::installed_service::{config_for, Defragd};
use super::user_manager::UserManager;
use super::*;

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

    // One service driven by defragctl, scenario by scenario: each starts
    // where the one before left it.
    the_crawl_finds_the_file_and_moves_it_in_the_sandbox(&svc, &crawled, crawled_extents);
    status_speaks_to_people_and_to_scripts(&svc, &root);
    pause_shows_in_both_statuses(&svc);
    let (file, extents, sum) = a_file_queued_while_paused_stays_unmoved(&svc, &root);
    resume_moves_it_and_the_history_says_so(&svc, &file, extents, &sum);
    reload_applies_a_good_config_and_refuses_a_bad_one(&svc, &mut cfg);
    a_non_root_peer_is_refused(&svc);

    let t = Instant::now();
    mgr.systemctl_ok(&["stop", "defragd"]);
    let s = svc.show(&["Result", "ExecMainStatus"]);
    eprintln!("stop took {:.2}s: {s:?}", t.elapsed().as_secs_f64());
    assert_eq!(
        (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
        ("success", "0")
    );
}

/// The crawl finds the file and a worker moves it, all under the unit's
/// sandbox.
fn the_crawl_finds_the_file_and_moves_it_in_the_sandbox(
    svc: &Defragd,
    crawled: &Path,
    crawled_extents: u64,
) {
    let t = Instant::now();
    let entry = wait_for(
        "the crawl's move in the history",
        Duration::from_secs(30),
        || {
            fail_on_denied_syscalls(svc);
            history_entry(svc, crawled)
        },
    );
    eprintln!(
        "crawled and moved within {:.1}s of start: {entry}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(entry["outcome"], "defragmented", "{entry}");
    assert_eq!(entry["extents_before"], crawled_extents, "{entry}");
    assert!(filefrag_extents(crawled) < crawled_extents / 4);
    wait_for("the first crawl pass", Duration::from_secs(15), || {
        svc.prop("StatusText")
            .contains("next crawl in")
            .then_some(())
    });
}

/// status, for people and for scripts.
fn status_speaks_to_people_and_to_scripts(svc: &Defragd, root: &Path) {
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
}

/// pause: the status says so, for defragctl and for systemd.
fn pause_shows_in_both_statuses(svc: &Defragd) {
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
}

/// A fragmented file, queued by hand: while paused it stays queued and
/// unmoved. (No settle now: the manager's namespace has its own copy of
/// the mount; the pause gives ext4 the seconds it needs instead.)
fn a_file_queued_while_paused_stays_unmoved(svc: &Defragd, root: &Path) -> (PathBuf, u64, String) {
    let file = fragmented_file(root, "queued", 16 * MIB, 0x5eed);
    let extents = filefrag_extents(&file);
    let sum = md5(&file);
    sleep(Duration::from_millis(1100)); // past the quiet period
    let out = svc.defragctl(&["defrag", &file.to_string_lossy()]);
    fail_on_denied_syscalls(svc);
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
    assert!(history_entry(svc, &file).is_none());
    (file, extents, sum)
}

/// resume: it is moved, and history says so.
fn resume_moves_it_and_the_history_says_so(svc: &Defragd, file: &Path, extents: u64, sum: &str) {
    assert_eq!(svc.defragctl_ok(&["resume"]).trim(), "resumed");
    let t = Instant::now();
    let entry = wait_for("the move in the history", Duration::from_secs(30), || {
        history_entry(svc, file)
    });
    eprintln!(
        "moved within {:.1}s of resume: {entry}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(entry["outcome"], "defragmented", "{entry}");
    let after = filefrag_extents(file);
    eprintln!("filefrag: {extents} -> {after} extents");
    assert!(after < extents / 4, "{extents} -> {after} extents");
    assert_eq!(md5(file), sum, "the data changed");
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
}

/// reload: a good config is applied, a bad one refused (exit 1).
fn reload_applies_a_good_config_and_refuses_a_bad_one(svc: &Defragd, cfg: &mut ServiceConfig) {
    let reloads = svc.count("configuration reloaded");
    cfg.max_mib_per_s = 32;
    svc.write_config(cfg);
    assert_eq!(
        svc.defragctl_ok(&["reload"]).trim(),
        "configuration reloaded"
    );
    svc.wait_for_log("configuration reloaded", reloads, Duration::from_secs(5));
    cfg.max_mib_per_s = 0;
    svc.write_config(cfg);
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
    svc.write_config(cfg);
    svc.defragctl_ok(&["reload"]);
}

/// A non-root peer is refused: by the socket's mode, and by the
/// service's own check when the mode would let it in.
fn a_non_root_peer_is_refused(svc: &Defragd) {
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
}
