//! The throttle under a real foreground load: a QD1 direct random reader
//! keeps I/O pressure high, and the service must slow down (its status says
//! so) yet still finish the file while the load runs, with the data intact.
//! How gentle it is, in latency, is the benchmark's business (bench/run
//! part 2), not a pass/fail test's.

use defragd_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

fn status_summary(socket: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_defragctl"))
        .arg("--socket")
        .arg(socket)
        .args(["status", "--json"])
        .output()
        .expect("run defragctl");
    let json: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) => return String::new(),
    };
    json["summary"].as_str().unwrap_or_default().to_string()
}

/// An ext4 image holding a 64 MiB file for a foreground reader and
/// data.bin, `size` bytes fragmented into more than 20 extents.
fn fragmented_beside_a_reader_file(size: u64, seed: u64) -> (LoopImage, PathBuf, PathBuf) {
    let mut img = LoopImage::create(ImageSpec::ext4(512));
    let root = img.root().to_path_buf();
    let reader_file = root.join("fio-read");
    run_ok(Command::new("fio").args([
        "--name=lay",
        &format!("--filename={}", reader_file.display()),
        "--size=64M",
        "--rw=write",
        "--bs=1M",
        "--direct=1",
    ]));
    let path = root.join("data.bin");
    make_fragmented_files(&root, &[(&path, size, seed)], 2 * MIB).delete_all(&root);
    img.settle();
    let before = filefrag_extents(&path);
    assert!(
        before > 20,
        "the fixture is not fragmented: {before} extents"
    );
    (img, reader_file, path)
}

#[test]
fn under_io_pressure_the_service_slows_down_but_still_finishes() {
    if !require_root() {
        return;
    }
    let (mut img, reader_file, path) = fragmented_beside_a_reader_file(48 * MIB, 0x7407);
    let root = img.root().to_path_buf();
    let before = filefrag_extents(&path);
    let sum = md5(&path);

    // The foreground load: QD1 direct random reads, longer than the move
    // can take even at the floor rate.
    let mut fio = spawn_fio(&[
        "--name=foreground".into(),
        format!("--filename={}", reader_file.display()),
        "--rw=randread".into(),
        "--bs=4k".into(),
        "--direct=1".into(),
        "--ioengine=psync".into(),
        "--time_based".into(),
        "--runtime=120".into(),
    ]);
    sleep(Duration::from_secs(2));

    // Slowing starts at 1% pressure; at 100% it still moves 8 MiB/s.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 256;
    cfg.pressure_percent = 1;
    cfg.min_mib_per_s = 8;
    home.write_config(&cfg);
    let mut svc = home.start(&[]);

    let mut slowed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        let summary = status_summary(&home.control_socket());
        if summary.contains("slowed to") {
            slowed.push(summary);
        }
        if svc
            .log()
            .contains(&format!("defragmented {}", path.display()))
        {
            break true;
        }
        if Instant::now() > deadline || !fio.is_running() {
            break false;
        }
        sleep(Duration::from_millis(100));
    };
    let load_still_ran = fio.is_running();
    fio.interrupt();
    let _ = fio.wait(Duration::from_secs(30));
    eprintln!(
        "{} status lines said slowed, e.g. {:?}; finished under load: {finished}",
        slowed.len(),
        slowed.first()
    );
    assert!(
        finished && load_still_ran,
        "the file was not defragmented while the foreground load ran; log:\n{}",
        svc.log()
    );
    assert!(
        !slowed.is_empty(),
        "the status never said the move was slowed by I/O pressure"
    );
    assert!(
        slowed.iter().all(|s| s.contains("by I/O pressure")),
        "{slowed:?}"
    );
    svc.stop(Duration::from_secs(15));
    assert_eq!(md5(&path), sum, "content changed");
    let after = filefrag_extents(&path);
    assert!(after < before, "extents {before} -> {after}");
    img.unmount_and_fsck();
}

#[test]
fn a_move_waits_while_others_use_the_disk_and_goes_once_they_stop() {
    if !require_root() {
        return;
    }
    let (mut img, reader_file, path) = fragmented_beside_a_reader_file(32 * MIB, 0x7408);
    let root = img.root().to_path_buf();
    let before = filefrag_extents(&path);
    let sum = md5(&path);

    // Someone else on the disk: QD1 direct random reads, the disk busy
    // all the time, long enough for the wait to pass the 10 s after which
    // a move the kernel holds is reported as stalled.
    let reader_runs = Duration::from_secs(20);
    let mut fio = spawn_fio(&[
        "--name=foreground".into(),
        format!("--filename={}", reader_file.display()),
        "--rw=randread".into(),
        "--bs=4k".into(),
        "--direct=1".into(),
        "--ioengine=psync".into(),
        "--time_based".into(),
        format!("--runtime={}", reader_runs.as_secs()),
    ]);
    let reader_started = Instant::now();
    sleep(Duration::from_secs(1));

    // The default ramp and floor; pressure off, so that only what the
    // move hears on the disk holds it.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 256;
    cfg.min_mib_per_s = 0;
    cfg.start_mib_per_s = 4;
    cfg.log_level = "debug".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);

    let mut waiting = Vec::new();
    while fio.is_running() && reader_started.elapsed() < reader_runs - Duration::from_secs(2) {
        let summary = status_summary(&home.control_socket());
        if summary.contains("waiting: others use the disk") {
            waiting.push(summary);
        }
        sleep(Duration::from_millis(200));
    }
    let log_beside_reader = svc.log();
    let moved_beside_reader =
        log_beside_reader.contains(&format!("defragmented {}", path.display()));
    // Not even the donor's allocation, the move's first I/O, happens while
    // the disk is in use (the ext4 donor logs "donor: N runs ..." at debug).
    let donor_beside_reader = log_beside_reader.contains("donor: ");
    let extents_beside_reader = filefrag_extents(&path);
    let _ = fio.wait(Duration::from_secs(30));
    eprintln!(
        "{} status lines said waiting, e.g. {:?}; extents {before} -> {extents_beside_reader} while the reader ran",
        waiting.len(),
        waiting.first()
    );
    assert!(
        !waiting.is_empty(),
        "the status never said the move waits for the disk; log:\n{}",
        svc.log()
    );
    assert!(
        !donor_beside_reader,
        "the donor was allocated while the reader ran; log:\n{log_beside_reader}"
    );
    // Its own wait, not the kernel's: no stall to warn an operator of.
    assert!(
        !log_beside_reader.contains("the kernel has held the move"),
        "the wait for the disk was reported as a kernel stall; log:\n{log_beside_reader}"
    );
    assert!(
        !moved_beside_reader && extents_beside_reader == before,
        "the file was moved beside the reader ({before} -> {extents_beside_reader} extents); log:\n{}",
        svc.log()
    );

    // Alone on the disk: the move goes.
    svc.wait_for_log(
        &format!("defragmented {}", path.display()),
        Duration::from_secs(90),
    );
    svc.stop(Duration::from_secs(15));
    assert_eq!(md5(&path), sum, "content changed");
    let after = filefrag_extents(&path);
    assert!(after < before, "extents {before} -> {after}");
    img.unmount_and_fsck();
}
