//! `defragd defrag` and `defragd check` on btrfs, the real binary: an
//! unshared file ends in no more extents than `btrfs filesystem
//! defragment` leaves on an identical copy of the image, a file a
//! read-only snapshot shares keeps its sharing (and `check` says how much
//! is shared), a compressed file stays compressed, and every refusal has
//! its code.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use defragd::sys::{self, Flush};
use defragd_testkit as common;
use defragd_testkit::{
    btrfs_defragment, btrfs_du, btrfs_filesystem_sync, btrfs_snapshot_ro, btrfs_subvolume,
    defrag_json, defragd, filefrag_extents, md5, sh, ImageSpec, LoopImage, SwapGuard, MIB,
};

use crate::{fragmented, interleave, text_fill};

/// 32 MiB in 128 KiB pieces: 256 extents.
const SIZE: u64 = 32 * MIB;
const PIECE: usize = 128 * 1024;

#[test]
fn defrag_matches_btrfs_defragment_and_leaves_a_snapshot_shared() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(1024));
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    // `loose` is in the top level, which no snapshot shares; `data/kept`
    // is in the subvolume the snapshot is taken of.
    let (loose, kept) = (root.join("loose"), root.join("data/kept"));
    fragmented(&[loose.clone(), root.join("other")], SIZE, PIECE);
    fragmented(&[kept.clone(), root.join("data/other")], SIZE, PIECE);
    btrfs_snapshot_ro(&root.join("data"), &root.join("snap"));
    btrfs_filesystem_sync(&root);
    let (sum_loose, sum_kept) = (md5(&loose), md5(&kept));
    let before = (filefrag_extents(&loose), filefrag_extents(&kept));
    assert!(
        before.0 >= 100 && before.1 >= 100,
        "not fragmented: {before:?}"
    );
    let mut twin = img.duplicate();
    let troot = twin.root().to_path_buf();

    let du_before = btrfs_du(&root.join("data"));
    let (report, run) = defrag_json(&[], &[&loose, &kept], 0);
    btrfs_filesystem_sync(&root);
    let du_after = btrfs_du(&root.join("data"));
    let after = (filefrag_extents(&loose), filefrag_extents(&kept));
    assert_eq!(
        report.file(&loose).outcome,
        "defragmented",
        "{}",
        run.stdout
    );
    let kept_report = report.file(&kept);
    assert_eq!(
        kept_report.reason_code.as_deref(),
        Some("shared_extents"),
        "{}",
        run.stdout
    );
    assert_eq!(after.1, before.1, "the shared file was rewritten");
    assert!(
        du_after.exclusive <= du_before.exclusive + 4 * MIB,
        "the snapshot's sharing was lost: exclusive {} -> {}",
        du_before.exclusive,
        du_after.exclusive
    );
    assert_eq!(md5(&loose), sum_loose);
    assert_eq!(md5(&kept), sum_kept);

    // `check` says what stays shared.
    let check = defragd(["check".as_ref(), kept.as_os_str()]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("shared: 32.00 MiB"),
        "check does not say what is shared:\n{}",
        check.stdout
    );

    // The peer, on the identical copy.
    let peer = btrfs_defragment(&troot.join("loose"));
    btrfs_filesystem_sync(&troot);
    let peer_extents = filefrag_extents(&troot.join("loose"));
    let tdu_before = btrfs_du(&troot.join("data"));
    btrfs_defragment(&troot.join("data/kept"));
    btrfs_filesystem_sync(&troot);
    let tdu_after = btrfs_du(&troot.join("data"));
    eprintln!(
        "loose: {} extents; defragd {} in {:.2} s, btrfs filesystem defragment {} in {:.2} s; \
         snapshotted data exclusive: defragd {} -> {} bytes, btrfs {} -> {}",
        before.0,
        after.0,
        run.elapsed.as_secs_f64(),
        peer_extents,
        peer.elapsed.as_secs_f64(),
        du_before.exclusive,
        du_after.exclusive,
        tdu_before.exclusive,
        tdu_after.exclusive
    );
    assert!(
        after.0 <= peer_extents,
        "defragd left {} extents, btrfs filesystem defragment {peer_extents}",
        after.0
    );
    assert_eq!(md5(&troot.join("loose")), sum_loose);
    twin.unmount_and_fsck();
    img.unmount_and_fsck();
}

/// FIEMAP extents of `path`: (all, compressed).
fn encoded(path: &Path) -> (usize, usize) {
    let file = File::open(path).expect("open");
    let map = sys::fiemap(file.as_fd(), Flush::Yes).expect("fiemap");
    let compressed = map.iter().filter(|e| e.flags.is_encoded()).count();
    (map.len(), compressed)
}

#[test]
fn a_compressed_file_stays_compressed() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(512).mount_opts("compress=zstd"));
    let root = img.root().to_path_buf();
    let file = root.join("logs");
    interleave(std::slice::from_ref(&file), SIZE, PIECE, &text_fill);
    // btrfs keeps extents of different sizes in different block groups,
    // so no filler lands between compressed extents: rewriting every
    // other 128 KiB fragments the file (the new extents go past its end).
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open for rewrite");
        let mut buf = vec![0u8; PIECE];
        for n in (1..SIZE / PIECE as u64).step_by(2) {
            text_fill(7, n, &mut buf);
            f.write_all_at(&buf, n * PIECE as u64).expect("rewrite");
            f.sync_all().expect("fsync");
        }
    }
    let sum = md5(&file);
    let (extents, compressed) = encoded(&file);
    assert_eq!(extents, compressed, "not all compressed to start with");
    let (report, run) = defrag_json(&[], &[&file], 0);
    let entry = report.file(&file);
    assert_eq!(entry.outcome, "defragmented", "{}", run.stdout);
    let (after, still) = encoded(&file);
    eprintln!(
        "compressed: {extents} FIEMAP extents in {:?} pieces -> {after} in {:?}, all compressed",
        entry.extents_before, entry.extents_after
    );
    assert_eq!(after, still, "some data was rewritten uncompressed");
    assert!(entry.extents_after < entry.extents_before, "{entry:?}");
    assert_eq!(entry.extents_after, Some(1), "{entry:?}");
    assert_eq!(md5(&file), sum);
    img.unmount_and_fsck();
}

/// `defragd defrag --json EXTRA... PATH`'s reason code for PATH.
fn code_of(extra: &[&str], path: &Path) -> String {
    let (report, run) = defrag_json(extra, &[path], 0);
    let entry = report.file(path);
    assert_eq!(entry.outcome, "skipped", "{}", run.stdout);
    entry.reason_code.clone().unwrap_or_default()
}

#[test]
fn each_refusal_has_its_code_and_writes_nothing() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(1024));
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    let data = root.join("data");
    // nodatacow: +C only takes on an empty file. In the top level, which
    // no snapshot shares.
    let nocow = root.join("nocow");
    File::create(&nocow).expect("create");
    sh("chattr", [OsStr::new("+C"), nocow.as_os_str()]);
    let (plain, shared) = (data.join("plain"), data.join("shared"));
    let files: Vec<PathBuf> = vec![nocow.clone(), plain.clone(), shared.clone()];
    fragmented(&files[..1], 8 * MIB, 64 * 1024);
    fragmented(&files[1..], 8 * MIB, 64 * 1024);
    btrfs_snapshot_ro(&data, &root.join("snap"));
    // Rewritten after the snapshot: `plain` is its own again.
    std::fs::remove_file(&plain).expect("remove");
    fragmented(&[plain.clone(), data.join("pad")], 8 * MIB, 64 * 1024);
    let swapfile = root.join("swapfile");
    sh(
        "btrfs",
        [
            OsStr::new("filesystem"),
            OsStr::new("mkswapfile"),
            OsStr::new("--size"),
            OsStr::new("32m"),
            swapfile.as_os_str(),
        ],
    );
    let sums: Vec<String> = files.iter().map(|f| md5(f)).collect();
    let extents: Vec<u64> = files.iter().map(|f| filefrag_extents(f)).collect();

    assert_eq!(
        code_of(&[], &root.join("snap/plain")),
        "read_only_subvolume"
    );
    assert_eq!(code_of(&[], &nocow), "nocow");
    assert_eq!(code_of(&[], &shared), "shared_extents");
    assert_eq!(
        code_of(&["--reserve-percent", "90"], &plain),
        "not_enough_free_space"
    );
    {
        let _writer = OpenOptions::new()
            .append(true)
            .open(&plain)
            .expect("open for writing");
        assert_eq!(code_of(&[], &plain), "busy");
    }
    {
        let _swap = SwapGuard::activate(&swapfile);
        assert_eq!(code_of(&[], &swapfile), "swapfile");
    }
    for (i, f) in files.iter().enumerate() {
        assert_eq!(md5(f), sums[i], "{} changed", f.display());
        assert_eq!(filefrag_extents(f), extents[i], "{} was moved", f.display());
    }
    // The policy lets nodatacow files through, and the plain file goes.
    let (report, run) = defrag_json(&["--allow-nocow"], &[&nocow, &plain], 0);
    assert_eq!(
        report.file(&nocow).outcome,
        "defragmented",
        "{}",
        run.stdout
    );
    assert_eq!(
        report.file(&plain).outcome,
        "defragmented",
        "{}",
        run.stdout
    );
    assert_eq!(md5(&nocow), sums[0]);
    img.unmount_and_fsck();
}
