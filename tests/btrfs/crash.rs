//! A `defragd defrag` killed (SIGKILL) in the middle of a btrfs file: the
//! data is intact and the filesystem clean, part of the file may be
//! rewritten already, and a second run finishes it. The rewrite is
//! copy-on-write: a chunk is either the old extents or the new ones.

use std::process::Command;
use std::time::{Duration, Instant};

use defragd_testkit as common;
use defragd_testkit::{
    defrag_json, defragd_bin, filefrag_extents, md5, ImageSpec, LoopImage, Proc, MIB,
};

use crate::fragmented;

#[test]
fn a_move_killed_midway_leaves_the_data_intact_and_a_rerun_finishes_it() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(1024));
    let root = img.root().to_path_buf();
    let file = root.join("big");
    fragmented(&[file.clone(), root.join("other")], 96 * MIB, 128 * 1024);
    let (sum, before) = (md5(&file), filefrag_extents(&file));
    let logs = common::tempdir();
    // 8 MiB/s over 96 MiB: 12 s, killed after about 3.
    let mut cmd = Command::new(defragd_bin());
    cmd.args(["defrag", "--max-mib-per-s", "8"]).arg(&file);
    let mut proc = Proc::spawn(cmd, logs.path(), "defrag");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        proc.is_running(),
        "defragd finished before it could be killed: {}",
        proc.stdout()
    );
    proc.kill();
    let killed_after = started.elapsed();
    assert_eq!(md5(&file), sum, "data changed by a killed move");
    let midway = filefrag_extents(&file);
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(&file), sum, "data changed after the remount");
    let (report, run) = defrag_json(&[], &[&file], 0);
    let after = filefrag_extents(&file);
    eprintln!(
        "killed after {:.1} s: {before} extents -> {midway} midway (after a remount) -> {after} \
         after the rerun ({:.2} s)",
        killed_after.as_secs_f64(),
        run.elapsed.as_secs_f64()
    );
    assert!(midway < before, "nothing was rewritten before the kill");
    assert_eq!(report.file(&file).outcome, "defragmented", "{}", run.stdout);
    assert!(after * 10 <= before, "{before} -> {after}");
    assert_eq!(md5(&file), sum);
    img.unmount_and_fsck();
}
