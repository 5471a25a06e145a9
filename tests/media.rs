//! Media awareness: the default service on a loop device marked flash
//! (`queue/rotational` 0) moves a file in thousands of 64 KiB pieces and
//! leaves one in dozens of 8 MiB pieces, saying why in the history; on an
//! identical copy marked rotational it moves both (the flag followed, as
//! with `medium = "sysfs"`). With `medium = "auto"` the device is measured
//! whatever its flag says, and the measurement decides. The status says
//! which medium was decided and from what.

use defragd_testkit as common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// Sets a loop device's rotational flag and puts the old value back on
/// drop (also when the test panics). Only ever made for a loop device this
/// test attached.
struct RotationalGuard {
    path: PathBuf,
    old: String,
}

impl RotationalGuard {
    fn set(img: &LoopImage, rotational: bool) -> RotationalGuard {
        let dev = img.device().expect("the image is attached");
        let name = Path::new(dev).file_name().expect("a /dev/loopN path");
        let path = Path::new("/sys/block").join(name).join("queue/rotational");
        let old =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let value = if rotational { "1" } else { "0" };
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        RotationalGuard {
            path,
            old: old.trim().to_string(),
        }
    }
}

impl Drop for RotationalGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "cannot restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// A history row as `defragctl --json history` gives it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Row {
    path: PathBuf,
    outcome: String,
    reason_code: Option<String>,
    reason: Option<String>,
    bytes_moved: u64,
}

fn history(socket: &Path) -> Vec<Row> {
    let args: [&OsStr; 3] = [
        "--json".as_ref(),
        "history".as_ref(),
        "--limit=1000".as_ref(),
    ];
    let (out, _) = defragctl(socket, &args, secs(20));
    assert!(out.status.success(), "defragctl history: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    let rows = value.get("data").cloned().unwrap_or(value);
    serde_json::from_value(rows).expect("history rows")
}

/// The one covered filesystem's (medium, medium_source) in the status.
fn medium_in_status(socket: &Path) -> (String, String) {
    let fs = fs_in_status(socket);
    let word = |key: &str| fs[key].as_str().unwrap_or_default().to_string();
    (word("medium"), word("medium_source"))
}

/// The two files, relative to the mount point (so they name the same
/// files on the copy).
struct Files {
    large_pieces: PathBuf,
    small_pieces: PathBuf,
}

/// Writes a 192 MiB file into 8 MiB holes and a 128 MiB file into 64 KiB
/// holes, then frees the rest so the service has room to move them.
fn build(img: &mut LoopImage) -> Files {
    let root = img.root().to_path_buf();
    fs::create_dir(root.join("data")).expect("mkdir data");
    let files = Files {
        large_pieces: PathBuf::from("data/large-pieces.bin"),
        small_pieces: PathBuf::from("data/small-pieces.bin"),
    };
    let big_holes = fragment_free_space_with(&root, "filler8", 8 * MIB, 0);
    write_seeded_file(&root.join(&files.large_pieces), 192 * MIB, 0x8eb);
    let small_holes = fragment_free_space(&root, 0);
    write_seeded_file(&root.join(&files.small_pieces), 128 * MIB, 0x64b);
    small_holes.delete_all(&root);
    big_holes.delete_all(&root);
    img.settle();
    let large = filefrag_extents(&root.join(&files.large_pieces));
    let small = filefrag_extents(&root.join(&files.small_pieces));
    eprintln!("fixture: 192 MiB in {large} extents, 128 MiB in {small} extents");
    assert!(
        (12..=60).contains(&large),
        "fixture: the 8 MiB-piece file should be in dozens of extents, has {large}"
    );
    assert!(
        small >= 1000,
        "fixture: the 64 KiB-piece file should be in thousands of extents, has {small}"
    );
    files
}

/// `defragd check --json --medium=<choice>` on the two files: each file's
/// medium and read cost (its excess extents × `boundary_ms`), and the
/// total; the filesystem's entry, for the caller to look at further.
fn assert_check_costs(
    root: &Path,
    files: &Files,
    choice: &str,
    medium: &str,
    boundary_ms: f64,
) -> serde_json::Value {
    let large = root.join(&files.large_pieces);
    let small = root.join(&files.small_pieces);
    let choice = format!("--medium={choice}");
    let run = defragd([
        OsStr::new("check"),
        OsStr::new("--json"),
        OsStr::new(&choice),
        large.as_os_str(),
        small.as_os_str(),
    ]);
    let report: serde_json::Value = run.json();
    let mut total = 0.0;
    for f in report["files"].as_array().expect("files") {
        let excess = f["extents"].as_u64().unwrap_or(0) - f["ideal_extents"].as_u64().unwrap_or(0);
        let cost = f["read_cost_ms"].as_f64().expect("read_cost_ms");
        assert_eq!(f["medium"], medium, "{f}");
        assert!((cost - excess as f64 * boundary_ms).abs() < 1e-6, "{f}");
        total += cost;
    }
    let reported = report["total"]["read_cost_ms"]
        .as_f64()
        .expect("total read cost");
    assert!((reported - total).abs() < 1e-6, "{report}");
    let fs = report["filesystems"][0].clone();
    assert_eq!(fs["medium"], medium, "{fs}");
    assert_eq!(
        fs["read_cost_per_excess_extent_ms"].as_f64(),
        Some(boundary_ms),
        "the filesystem's entry names another cost per extent: {fs}"
    );
    eprintln!("check on {medium} ({choice}): total read cost {reported:.1} ms");
    fs
}

/// Starts the default service on `img`, waits for its crawl pass and for
/// the moves it makes; returns the history and the status's medium.
fn serve(img: &LoopImage, files: &Files, expect_moved: &[&Path]) -> (Vec<Row>, (String, String)) {
    let root = img.root().to_path_buf();
    wait_until_quiet(&[
        &root.join(&files.large_pieces),
        &root.join(&files.small_pieces),
    ]);
    let home = ServiceHome::new();
    home.write_config(&ServiceConfig::new(&root, &[]));
    let mut svc = home.start(&[]);
    svc.wait_for_log(&crawl_pass_done(&root), secs(120));
    for rel in expect_moved {
        svc.wait_for_log(&defragmented(&root.join(rel)), secs(180));
    }
    let socket = home.control_socket();
    let rows = history(&socket);
    let medium = medium_in_status(&socket);
    svc.stop(secs(30));
    (rows, medium)
}

fn row_for<'a>(rows: &'a [Row], root: &Path, rel: &Path) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r.path == root.join(rel) || r.path == rel)
        .collect()
}

#[test]
fn on_flash_large_pieces_are_left_with_a_reason_and_on_a_disk_both_are_moved() {
    if !require_root() {
        return;
    }
    let mut flash = LoopImage::create(ImageSpec::ext4(1280));
    let files = build(&mut flash);
    let mut disk = flash.duplicate();

    // Flash.
    let root = flash.root().to_path_buf();
    let large_before = filefrag_extents(&root.join(&files.large_pieces));
    let small_before = filefrag_extents(&root.join(&files.small_pieces));
    let (rows, medium) = {
        let _ssd = RotationalGuard::set(&flash, false);
        let fs = assert_check_costs(&root, &files, "sysfs", "ssd", 0.1);
        assert_eq!(fs["medium_source"], "sysfs", "{fs}");
        serve(&flash, &files, &[&files.small_pieces])
    };
    eprintln!("flash history: {rows:#?}");
    assert_eq!(medium, ("ssd".to_string(), "sysfs".to_string()));
    let small_after = filefrag_extents(&root.join(&files.small_pieces));
    assert!(
        small_after * 10 < small_before,
        "on flash the 64 KiB-piece file was to be moved: {small_before} -> {small_after} extents"
    );
    assert_eq!(
        filefrag_extents(&root.join(&files.large_pieces)),
        large_before,
        "on flash the 8 MiB-piece file was to be left as it was"
    );
    let large_rows = row_for(&rows, &root, &files.large_pieces);
    assert_eq!(
        large_rows.len(),
        1,
        "one history row for the left file: {rows:#?}"
    );
    let left = large_rows[0];
    assert_eq!(left.outcome, "skipped");
    assert_eq!(left.reason_code.as_deref(), Some("no_benefit_on_medium"));
    assert_eq!(left.bytes_moved, 0);
    let reason = left.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("on ssd"),
        "the reason names the medium: {reason}"
    );
    let small_rows = row_for(&rows, &root, &files.small_pieces);
    assert!(
        small_rows.iter().any(|r| r.outcome == "defragmented"),
        "{rows:#?}"
    );

    // A disk: the identical copy, marked rotational.
    let root = disk.root().to_path_buf();
    let large_before = filefrag_extents(&root.join(&files.large_pieces));
    let (rows, medium) = {
        let _hdd = RotationalGuard::set(&disk, true);
        let fs = assert_check_costs(&root, &files, "sysfs", "hdd", 8.0);
        assert_eq!(fs["medium_source"], "sysfs", "{fs}");
        // The operator's word wins over the flag.
        let fs = assert_check_costs(&root, &files, "ssd", "ssd", 0.1);
        assert_eq!(fs["medium_source"], "config", "{fs}");
        serve(&disk, &files, &[&files.small_pieces, &files.large_pieces])
    };
    eprintln!("disk history: {rows:#?}");
    assert_eq!(medium, ("hdd".to_string(), "sysfs".to_string()));
    let large_after = filefrag_extents(&root.join(&files.large_pieces));
    assert!(
        large_after < large_before,
        "on a disk the 8 MiB-piece file was to be moved: {large_before} -> {large_after} extents"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.reason_code.as_deref() == Some("no_benefit_on_medium")),
        "nothing is left for want of benefit on a disk: {rows:#?}"
    );
    disk.unmount_and_fsck();
    flash.unmount_and_fsck();
}

/// The one covered filesystem as `defragctl --json status` gives it.
fn fs_in_status(socket: &Path) -> serde_json::Value {
    let args: [&OsStr; 2] = ["--json".as_ref(), "status".as_ref()];
    let (out, _) = defragctl(socket, &args, secs(20));
    assert!(out.status.success(), "defragctl status: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let value = value.get("data").cloned().unwrap_or(value);
    value["filesystems"][0].clone()
}

/// `medium = "auto"` (the default): the device is measured, whatever its
/// rotational flag says (here "a disk", as virtual disks say over flash),
/// and the medium measured decides what is moved. What the loop device
/// measures depends on the host's disk under the image file, so the test
/// holds the service to its own measurement: under 1 ms a boundary, flash,
/// and the 8 MiB-piece file is left; 1 ms or more, a disk, and it is moved.
#[test]
fn auto_measures_the_device_whatever_its_flag_says_and_follows_the_measurement() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(1280));
    let files = build(&mut img);
    let root = img.root().to_path_buf();
    let large = root.join(&files.large_pieces);
    let small = root.join(&files.small_pieces);
    let large_before = filefrag_extents(&large);
    let _flag = RotationalGuard::set(&img, true);
    wait_until_quiet(&[&large, &small]);

    // `defragd check` measures too (its default, --medium=auto), and says so.
    let check = defragd([
        OsStr::new("check"),
        OsStr::new("-r"),
        OsStr::new("--json"),
        root.as_os_str(),
    ]);
    let report: serde_json::Value = check.json();
    let checked = report["filesystems"][0].clone();
    eprintln!("check: {checked:#}");
    assert_eq!(checked["medium_source"], "measured", "{checked}");
    let checked_ms = checked["medium_boundary_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("a measured boundary cost in check's report: {checked}"));
    let checked_medium = if checked_ms < 1.0 { "ssd" } else { "hdd" };
    assert_eq!(checked["medium"], checked_medium, "{checked}");
    let human = defragd([OsStr::new("check"), OsStr::new("-r"), root.as_os_str()]);
    assert!(
        human
            .stdout
            .contains("(measured: one extent boundary costs"),
        "check says the medium was measured: {}",
        human.stdout
    );

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.medium = "auto".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    let line = svc.wait_for_log(&format!("{}: medium ", root.display()), secs(120));
    eprintln!("measured: {line}");
    svc.wait_for_log(&crawl_pass_done(&root), secs(120));
    svc.wait_for_log(&defragmented(&small), secs(180));
    let socket = home.control_socket();
    let fs = fs_in_status(&socket);
    eprintln!("status: {fs:#}");
    assert_eq!(fs["medium_source"], "measured", "{fs}");
    let boundary_ms = fs["medium_boundary_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("a measured boundary cost in the status: {fs}"));
    assert!(
        boundary_ms.is_finite() && boundary_ms >= 0.0,
        "{boundary_ms}"
    );
    assert!(
        line.contains("(measured: one extent boundary costs"),
        "the log says what was measured: {line}"
    );
    if boundary_ms < 1.0 {
        assert_eq!(fs["medium"], "ssd", "{fs}");
        assert!(
            line.contains("the rotational flag says hdd"),
            "the log says the flag disagrees: {line}"
        );
        let rows = history(&socket);
        let left = row_for(&rows, &root, &files.large_pieces);
        assert!(
            left.iter()
                .any(|r| r.reason_code.as_deref() == Some("no_benefit_on_medium")),
            "measured flash: the 8 MiB-piece file is left for want of benefit: {rows:#?}"
        );
        assert_eq!(filefrag_extents(&large), large_before);
    } else {
        assert_eq!(fs["medium"], "hdd", "{fs}");
        svc.wait_for_log(&defragmented(&large), secs(180));
        assert!(filefrag_extents(&large) < large_before);
    }
    svc.stop(secs(30));
    drop(_flag);
    img.unmount_and_fsck();
}

#[test]
fn a_spent_write_budget_holds_moves_and_the_status_says_so() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(512));
    let root = img.root().to_path_buf();
    let file = root.join("big.bin");
    make_fragmented_files(&root, &[(&file, 64 * MIB, 0xb0d)], 2 * MIB).delete_all(&root);
    img.settle();
    let before = filefrag_extents(&file);
    let _hdd = RotationalGuard::set(&img, true);
    wait_until_quiet(&[&file]);

    let home = ServiceHome::new();
    home.write_config(&ServiceConfig::new(&root, &[]));
    // 4 MiB a day on a disk: the move stops after a few 1 MiB chunks.
    let mut svc = home.start(&[("DEFRAGD__THROTTLE__WRITE_BUDGET_HDD", "4MiB")]);
    svc.wait_for_log(&defragmenting(&file), secs(120));
    let socket = home.control_socket();
    let args: [&OsStr; 2] = ["--json".as_ref(), "status".as_ref()];
    let t = std::time::Instant::now();
    let status = loop {
        let (out, _) = defragctl(&socket, &args, secs(20));
        assert!(out.status.success(), "defragctl status: {out:?}");
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let value = value.get("data").cloned().unwrap_or(value);
        if value["state"] == "budget" {
            break value;
        }
        assert!(
            t.elapsed() < secs(60),
            "the status never said the budget was spent: {value}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    eprintln!("status: {status:#}");
    let summary = status["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("daily write budget spent on") && summary.contains("next day"),
        "{summary}"
    );
    let fs = &status["filesystems"][0];
    assert_eq!(fs["write_budget_bytes"], 4 * MIB);
    let written = fs["written_today_bytes"].as_u64().unwrap_or_default();
    assert!(
        (4 * MIB..64 * MIB).contains(&written),
        "written today: {written}"
    );
    assert!(
        status["queued"].as_u64().unwrap_or_default() >= 1,
        "the job waits in the queue"
    );
    // Nothing more moves: the job is not finished a few seconds later.
    std::thread::sleep(secs(3));
    assert!(
        svc.lines_with(&defragmented(&file)).is_empty(),
        "the file was finished despite the spent budget"
    );
    svc.stop(secs(30));
    assert!(filefrag_extents(&file) <= before);
    drop(_hdd);
    img.unmount_and_fsck();
}
