//! The service on btrfs, the real binary: the top level (subvolid=5) and a
//! subvolume mounted on its own are each covered once (a second mount of
//! the subvolume adds nothing); writes are tracked with fanotify on the
//! top level, whose mark also sees the writes of the subvolumes the kernel
//! will not mark on their own (EXDEV), which `status` says; written files
//! are queued and defragmented, a file a snapshot
//! shares is left shared, and a move killed (SIGKILL) resumes from its
//! cursor after a restart and finishes, the data intact.

use std::ffi::OsStr;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use defragd_testkit as common;
use defragd_testkit::{
    btrfs_snapshot_ro, btrfs_subvolume, crawl_pass_done, defragctl, defragmented, defragmenting,
    filefrag_extents, md5, secs, sh_status, ImageSpec, LoopImage, MountGuard, ServiceConfig,
    ServiceHome, MIB, TRACKING_WRITES,
};

use crate::fragmented;

fn status_json(socket: &Path) -> serde_json::Value {
    let args: [&OsStr; 2] = ["--json".as_ref(), "status".as_ref()];
    let (out, _) = defragctl(socket, &args, secs(20));
    assert!(out.status.success(), "defragctl status: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    value.get("data").cloned().unwrap_or(value)
}

/// The status entry of the filesystem mounted at `mount_point`.
fn fs_status<'a>(status: &'a serde_json::Value, mount_point: &Path) -> &'a serde_json::Value {
    status["filesystems"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|fs| fs["mount_point"].as_str() == mount_point.to_str())
        })
        .unwrap_or_else(|| panic!("{} not in the status: {status}", mount_point.display()))
}

#[test]
fn the_service_covers_each_subvolume_once_tracks_writes_and_resumes_after_sigkill() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(1024));
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    let shared = root.join("data/shared");
    fragmented(
        &[shared.clone(), root.join("data/pad0")],
        8 * MIB,
        64 * 1024,
    );
    btrfs_snapshot_ro(&root.join("data"), &root.join("snap"));
    let shared_extents = filefrag_extents(&shared);
    let device = img.device().expect("attached").to_string();
    btrfs_subvolume(&root.join("quiet"));
    // Writable, and mounted nowhere: nothing covers it, and the service
    // says so (unlike `data` and `quiet`, mounted below, and the snapshot).
    btrfs_subvolume(&root.join("nested"));
    let sub = MountGuard::btrfs_subvolume(&device, "data");
    // Without `watch` trees: the crawl alone, but for what the top
    // level's mark sees.
    let quiet = MountGuard::btrfs_subvolume(&device, "quiet");
    let quietroot = quiet.root().to_path_buf();
    let again = MountGuard::btrfs_subvolume(&device, "data");
    let subroot = sub.root().to_path_buf();

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.filesystems.push(common::FsConfig {
        path: subroot.clone(),
        watch: vec![subroot.clone()],
    });
    cfg.filesystems.push(common::FsConfig {
        path: again.root().to_path_buf(),
        watch: Vec::new(),
    });
    cfg.filesystems.push(common::FsConfig {
        path: quietroot.clone(),
        watch: Vec::new(),
    });
    // 96 MiB at 24 MiB/s: 4 s to kill the move in.
    cfg.max_mib_per_s = 24;
    home.write_config(&cfg);
    let socket = home.control_socket();
    let mut svc = home.start(&[]);
    svc.wait_for_log(TRACKING_WRITES, secs(30));
    let said = svc.wait_for_log(
        &format!(
            "{}: tracking writes through the top level's mark",
            subroot.display()
        ),
        secs(30),
    );
    assert!(said.contains(&root.display().to_string()), "{said}");
    assert!(
        svc.lines_with("cannot track writes on the whole filesystem")
            .is_empty(),
        "a subvolume whose top level is covered fell back"
    );
    svc.wait_for_log(&crawl_pass_done(&subroot), secs(60));
    svc.wait_for_log(&crawl_pass_done(&root), secs(60));
    let uncovered = svc.wait_for_log("btrfs subvolume(s) below it are not covered", secs(10));
    assert!(
        uncovered.contains(&format!("{}: 1 btrfs subvolume(s)", root.display()))
            && uncovered.contains(&root.join("nested").display().to_string()),
        "{uncovered}"
    );
    let skipped = svc.wait_for_log(
        &format!("skipped {}", subroot.join("shared").display()),
        secs(30),
    );
    assert!(skipped.contains("snapshot"), "{skipped}");

    let status = status_json(&socket);
    let covered = status["filesystems"].as_array().map_or(0, Vec::len);
    assert_eq!(
        covered, 3,
        "two mounts of one subvolume count once: {status}"
    );
    let top_level = fs_status(&status, &root);
    assert_eq!(top_level["tracking"], "fanotify", "{status}");
    assert_eq!(top_level["subvolume"], 5, "{status}");
    assert!(top_level["tracking_note"].is_null(), "{status}");
    // Both subvolumes, with a `watch` tree or without: seen through the
    // top level's mark, and said so.
    let subvolume = fs_status(&status, &subroot);
    assert_eq!(subvolume["subvolume"], 256, "{status}");
    for fs in [subvolume, fs_status(&status, &quietroot)] {
        assert_eq!(fs["tracking"], "fanotify", "{status}");
        assert!(
            fs["tracking_note"]
                .as_str()
                .is_some_and(|n| n.contains("top level's mark")),
            "{status}"
        );
    }

    // Written in the top level or in either subvolume: the top level's
    // mark, whose events for another subvolume go to that subvolume's
    // mount (the crawl runs once a day here).
    let (top, inner, seen) = (
        root.join("top.db"),
        subroot.join("app.db"),
        quietroot.join("seen.db"),
    );
    fragmented(&[top.clone(), root.join("pad1")], 8 * MIB, 64 * 1024);
    fragmented(&[inner.clone(), subroot.join("pad2")], 8 * MIB, 64 * 1024);
    fragmented(&[seen.clone(), quietroot.join("pad4")], 8 * MIB, 64 * 1024);
    let sums = (md5(&top), md5(&inner));
    for path in [&top, &inner, &seen] {
        let done = svc.wait_for_log(&defragmented(path), secs(60));
        eprintln!("{}", done.trim());
        assert!(filefrag_extents(path) <= 2, "{done}");
    }
    assert_eq!((md5(&top), md5(&inner)), sums);
    assert_eq!(
        filefrag_extents(&shared),
        shared_extents,
        "the shared file moved"
    );

    // A long move, killed midway, resumes from its cursor.
    let big = subroot.join("big");
    fragmented(&[big.clone(), subroot.join("pad3")], 96 * MIB, 128 * 1024);
    let sum = md5(&big);
    let before = filefrag_extents(&big);
    svc.wait_for_log(&defragmenting(&big), secs(60));
    sleep(Duration::from_secs(2));
    svc.sigkill();
    assert_eq!(md5(&big), sum, "data changed by the killed move");
    let midway = filefrag_extents(&big);
    let mut svc = home.start(&[]);
    let resumed = svc.wait_for_log("resuming job", secs(60));
    let done = svc.wait_for_log(&defragmented(&big), secs(60));
    let after = filefrag_extents(&big);
    eprintln!(
        "killed move: {before} extents -> {midway} at the kill -> {after}; {} / {}",
        resumed.trim(),
        done.trim()
    );
    assert!(resumed.contains(&big.display().to_string()), "{resumed}");
    assert!(after * 10 <= before, "{before} -> {after}");
    assert_eq!(md5(&big), sum);

    // Written while the service was down, in a subvolume seen through the
    // top level's mark: caught up from the subvolume's own mount at start
    // (its crawl is a day away).
    svc.stop(secs(10));
    let late = quietroot.join("written-while-down.db");
    fragmented(&[late.clone(), quietroot.join("pad5")], 8 * MIB, 64 * 1024);
    let late_sum = md5(&late);
    let mut svc = home.start(&[]);
    let caught = svc.wait_for_log(
        &format!("{}: caught up on writes since", quietroot.display()),
        secs(60),
    );
    let changed = caught.rsplit(": ").next().unwrap_or_default();
    assert!(
        changed
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1),
        "the catch-up found nothing: {caught}"
    );
    let done = svc.wait_for_log(&defragmented(&late), secs(60));
    assert!(filefrag_extents(&late) <= 2, "{done}");
    assert_eq!(md5(&late), late_sum);
    assert!(
        svc.lines_with(&format!("crawl of {}: starting pass", quietroot.display()))
            .is_empty(),
        "found by a crawl pass, not the catch-up"
    );
    svc.stop(secs(10));
    drop(quiet);
    drop(again);
    drop(sub);
    let (still, _, _) = sh_status("mountpoint", ["-q", subroot.to_str().unwrap_or("")]);
    assert!(!still, "the subvolume mount is still there");
    img.unmount_and_fsck();
}
