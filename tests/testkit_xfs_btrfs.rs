//! The test kit's XFS and btrfs images and judges, checked against the
//! tools they wrap: each image is made, mounted, written, remounted (the
//! content survives), checked by its own fsck and cleaned up; an XFS image
//! is cloned and the clone mounted beside it (`-o nouuid`), shut down both
//! ways and recovered; xfs_fsr and `btrfs filesystem defragment` run on a
//! fragmented file and the layout judges see the difference.

use std::fs;

use defragd_testkit as common;

use common::*;

/// A file of this size written into fragmented free space.
const FILE_BYTES: u64 = 16 * MIB;

/// Fragments the free space of `img` (to 2 MiB of ENOSPC), writes the file
/// under test into the holes and deletes the rest of the filler, so that a
/// defragmenter has room.
fn fragmented_file(img: &mut LoopImage, rel: &str) -> std::path::PathBuf {
    let root = img.root().to_path_buf();
    // On XFS this empties the reserve pool first (else the file under
    // test would fit whole in it).
    let filler = fragment_free_space(&root, 2 * MIB);
    let path = root.join(rel);
    write_seeded_file(&path, FILE_BYTES, 0x5eed);
    filler.delete_all(&root);
    img.settle();
    path
}

/// Whether `mnt` is a mount point with `option` among its options.
fn mounted_with(mnt: &std::path::Path, option: &str) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && std::path::Path::new(f[1]) == mnt
            && (option.is_empty() || f[3].split(',').any(|o| o == option))
    })
}

#[test]
fn xfs_image_survives_a_remount_a_clone_and_both_shutdowns() {
    if !require_root() {
        return;
    }
    require_tools(XFS_TOOLS);
    let mut img = LoopImage::create(ImageSpec::xfs(320));
    assert!(mounted_with(img.root(), ""), "the XFS image is not mounted");
    let file = fragmented_file(&mut img, "big.bin");
    let sum = md5(&file);
    let bmap = xfs_bmap_extents(&file);
    let fiemap = filefrag_extents(&file);
    eprintln!("xfs: {FILE_BYTES} B file in {bmap} extents by xfs_bmap, {fiemap} by filefrag");
    assert!(bmap > 10, "the fixture is not fragmented: {bmap} extents");
    // filefrag merges records that touch on disk; xfs_bmap lists each one.
    assert!(
        fiemap <= bmap,
        "filefrag {fiemap} > xfs_bmap {bmap} extents"
    );
    img.settle();
    assert_eq!(md5(&file), sum, "content changed across a remount");
    img.unmount_and_fsck();
    img.mount();

    // The clone mounts beside the original only with nouuid.
    let mut clone = img.duplicate();
    let rel = file
        .strip_prefix(img.root())
        .expect("under the mount")
        .to_path_buf();
    let cloned = clone.root().join(&rel);
    assert!(mounted_with(img.root(), "nouuid") && mounted_with(clone.root(), "nouuid"));
    assert_eq!(md5(&cloned), sum, "the clone's content differs");

    // xfs_fsr on the original only; the clone keeps the old layout.
    let run = xfs_fsr(&file);
    let after = xfs_bmap_extents(&file);
    eprintln!(
        "xfs_fsr: {bmap} -> {after} extents in {:.2}s",
        run.elapsed.as_secs_f64()
    );
    assert!(after < bmap, "xfs_fsr left {after} of {bmap} extents");
    assert_eq!(
        xfs_bmap_extents(&cloned),
        bmap,
        "the clone's layout changed"
    );
    assert_eq!(md5(&file), sum, "xfs_fsr changed the content");

    // Shutdown with the log flushed (on the original), without (on the
    // clone): after a replay both check clean and keep the file.
    fs::write(img.root().join("flushed"), b"x").expect("write");
    xfs_shutdown(img.root(), ShutdownFlag::LogFlush);
    assert!(
        fs::read_dir(img.root()).is_err(),
        "I/O still works after a shutdown"
    );
    let msgs = replay_journal(&mut img);
    assert!(
        msgs.iter().any(|m| m.contains("recovery")),
        "no log recovery on the mount after the shutdown: {msgs:?}"
    );
    img.unmount_and_fsck();
    xfs_shutdown(clone.root(), ShutdownFlag::NoLogFlush);
    clone.replay_and_fsck();
    img.mount();
    clone.mount();
    assert_eq!(md5(&file), sum);
    assert_eq!(md5(&cloned), sum);
}

#[test]
fn btrfs_image_survives_a_remount_and_defragment_unshares_from_a_snapshot() {
    if !require_root() {
        return;
    }
    require_tools(BTRFS_TOOLS);
    let mut img = LoopImage::create(ImageSpec::btrfs(512));
    assert!(
        mounted_with(img.root(), ""),
        "the btrfs image is not mounted"
    );
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    let file = fragmented_file(&mut img, "data/big.bin");
    let sum = md5(&file);
    let before = filefrag_extents(&file);
    assert!(
        before > 10,
        "the fixture is not fragmented: {before} extents"
    );
    img.settle();
    assert_eq!(md5(&file), sum, "content changed across a remount");

    btrfs_snapshot_ro(&root.join("data"), &root.join("snap"));
    let shared = btrfs_du(&root.join("data"));
    assert_eq!(
        shared.exclusive, 0,
        "a fresh snapshot shares everything: {shared:?}"
    );
    assert!(shared.set_shared >= FILE_BYTES, "{shared:?}");

    let run = btrfs_defragment(&file);
    sync_fs(&root);
    let after = filefrag_extents(&file);
    let unshared = btrfs_du(&root.join("data"));
    eprintln!(
        "btrfs defragment: {before} -> {after} extents in {:.2}s; exclusive {} -> {} B",
        run.elapsed.as_secs_f64(),
        shared.exclusive,
        unshared.exclusive
    );
    assert!(
        after < before,
        "btrfs defragment left {after} of {before} extents"
    );
    assert!(
        unshared.exclusive > 0,
        "defragment rewrote the file but nothing is exclusive: {unshared:?}"
    );
    assert_eq!(md5(&file), sum, "btrfs defragment changed the content");
    assert_eq!(md5(&root.join("snap/big.bin")), sum, "the snapshot changed");

    img.unmount_and_fsck();
    img.mount();
    let mut clone = img.duplicate();
    assert_eq!(md5(&clone.root().join("data/big.bin")), sum);
    clone.unmount_and_fsck();
    img.replay_and_fsck();
}

#[test]
fn the_layout_parsers_read_the_tools_output() {
    let bmap = "f:\n EXT: FILE-OFFSET      BLOCK-RANGE      AG AG-OFFSET        TOTAL FLAGS\n   \
                0: [0..255]:        192..447          0 (192..447)         256 000000\n   \
                1: [256..383]:      hole                                   128\n   \
                2: [384..1023]:     576..1215         1 (576..1215)        640 010000\n";
    let ext = parse_bmap(bmap).expect("parse");
    assert_eq!(ext.len(), 2);
    assert_eq!(
        (ext[0].file_offset, ext[0].block, ext[0].len),
        (0, 192, 256)
    );
    assert!(!ext[0].unwritten && ext[1].unwritten && ext[1].ag == 1);
    let du = "     Total   Exclusive  Set shared  Filename\n   1048576        4096     1044480  m/data\n";
    assert_eq!(
        parse_du(du),
        Some(BtrfsDu {
            total: 1048576,
            exclusive: 4096,
            set_shared: 1044480
        })
    );
    assert_eq!(parse_du("ERROR: cannot check space"), None);
}

/// The ext4 fixture builder works on XFS and btrfs too: its large file is
/// fragmented (it asserts > 50 extents) and the image checks clean.
#[test]
fn the_fixture_builds_on_xfs_and_btrfs() {
    if !require_root() {
        return;
    }
    require_tools(XFS_TOOLS);
    require_tools(BTRFS_TOOLS);
    let spec = FixtureSpec {
        large_mib: 32,
        logs: 2,
        log_appends: 50,
        ..FixtureSpec::default()
    };
    for image in [ImageSpec::xfs(400), ImageSpec::btrfs(400)] {
        let kind = image.kind;
        let mut img = LoopImage::create(image);
        let fx = build_fixture(&mut img, &spec);
        let large = img.root().join(&fx.large);
        let before = file_state(&large);
        img.settle();
        assert_eq!(
            file_state(&large).md5,
            before.md5,
            "{kind:?}: content changed"
        );
        img.unmount_and_fsck();
    }
}
