//! The btrfs backend on real btrfs images: its range selection and the
//! kernel's DEFRAG_RANGE over the unshared file lower its extents with
//! its data intact, while a file that a read-only snapshot shares stays
//! shared; `btrfs filesystem defragment` on a clone of the same image is
//! the comparison (fewer extents, but the snapshot's sharing lost). A
//! compressed file stays compressed. `btrfs check --readonly` is clean
//! after each. (The backend's own calls, below the mover: what the mover
//! does with them is `cli`'s.)

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use defragd::backend::btrfs::{self as backend, BtrfsDefrag, FileFacts, Selection};
use defragd::outcome::SkipReason;
use defragd::plan;
use defragd::sys::{self, Flush};
use defragd_testkit as common;
use defragd_testkit::{
    btrfs_du, btrfs_filesystem_sync, btrfs_snapshot_ro, btrfs_subvolume, filefrag_extents, md5,
    run_ok, sh, ImageSpec, LoopImage, MIB,
};

use crate::{interleave, random_fill, text_fill};

/// A btrfs image of `size_mib`, mounted with `opts`.
fn spec(size_mib: u64, opts: Option<&str>) -> ImageSpec {
    let spec = ImageSpec::btrfs(size_mib);
    match opts {
        Some(o) => spec.mount_opts(o),
        None => spec,
    }
}

/// `btrfs filesystem du -s --raw DIR`: its exclusive bytes, once what
/// was just written is committed.
fn exclusive_bytes(dir: &Path) -> u64 {
    btrfs_filesystem_sync(dir);
    btrfs_du(dir).exclusive
}

/// What defragd did to one file.
#[derive(Debug)]
enum Done {
    Defragmented {
        chunks: usize,
        selection: Selection,
    },
    Skipped {
        reason: SkipReason,
        selection: Option<Selection>,
    },
}

/// The btrfs backend over one file, as the mover will run it: facts and
/// refusals first, then the selection, then DEFRAG_RANGE chunk by chunk,
/// each made durable before the next.
fn defragd_file(path: &Path, extent_thresh: u32, chunk_bytes: u64) -> Done {
    // Read-only: the read lease that tells whether anyone writes the file
    // needs it, and DEFRAG_RANGE does not need write access as root.
    let file = File::open(path).expect("open");
    let fd = file.as_fd();
    let facts = FileFacts::probe(fd, false).expect("probe");
    if let Err(reason) = backend::refuse_unmovable(&facts, false) {
        return Done::Skipped {
            reason,
            selection: None,
        };
    }
    let bs = facts.block_size;
    let map = sys::fiemap(fd, Flush::Yes).expect("fiemap");
    let selection = backend::select(&map, bs, u64::from(extent_thresh));
    let ideal = selection.pieces.min(1);
    if let Err(reason) = backend::refuse_selection(&selection, ideal) {
        return Done::Skipped {
            reason,
            selection: Some(selection),
        };
    }
    let compression = if selection.has_compressed() {
        match backend::compression_for(&facts) {
            Ok(c) => Some(c),
            Err(reason) => {
                return Done::Skipped {
                    reason,
                    selection: Some(selection),
                }
            }
        }
    } else {
        None
    };
    defragd::backend::check_free_space(fd, backend::space_needed(&selection, bs), 1.0)
        .expect("free space");
    let defrag = BtrfsDefrag::new(&selection, extent_thresh, compression);
    let chunks = defrag.chunks(plan::chunk_blocks(chunk_bytes, bs), 0, bs);
    for chunk in &chunks {
        let done = defrag.relocate(fd, chunk, bs).expect("DEFRAG_RANGE");
        assert_eq!(done, chunk.len.get());
        defrag.make_durable(fd).expect("fsync");
    }
    Done::Defragmented {
        chunks: chunks.len(),
        selection,
    }
}

/// Copies the unmounted image (sparse) and gives the copy a new fsid, so
/// that the kernel never takes the two for one filesystem.
fn clone_image(img: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = common::tempdir();
    let copy = dir.path().join("clone.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(img)
            .arg(&copy),
    );
    run_ok(Command::new("btrfstune").arg("-f").arg("-u").arg(&copy));
    (dir, copy)
}

const FILE_SIZE: u64 = 64 * MIB;
const PIECE: usize = 128 * 1024;
const THRESH: u32 = backend::DEFAULT_EXTENT_THRESH;
const CHUNK: u64 = 8 * MIB;

#[test]
fn defragd_keeps_a_snapshots_sharing_where_btrfs_defragment_does_not() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(spec(2048, None));
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    // `loose` (top level, no snapshot) and `data/kept` (in the snapshot)
    // interleave with two fillers, deleted afterwards.
    let (loose, kept) = (root.join("loose"), root.join("data/kept"));
    let fillers = [root.join("filler1"), root.join("data/filler2")];
    let all = [
        loose.clone(),
        kept.clone(),
        fillers[0].clone(),
        fillers[1].clone(),
    ];
    interleave(&all, FILE_SIZE, PIECE, &random_fill);
    for f in &fillers {
        std::fs::remove_file(f).expect("delete filler");
    }
    btrfs_snapshot_ro(&root.join("data"), &root.join("snap"));
    let (sum_loose, sum_kept) = (md5(&loose), md5(&kept));
    let before = (filefrag_extents(&loose), filefrag_extents(&kept));
    assert!(
        before.0 >= 100 && before.1 >= 100,
        "not fragmented: {before:?}"
    );
    img.unmount();
    let (_clone_dir, clone) = clone_image(img.image_path());
    img.mount();

    // defragd's ranges.
    let excl_before = exclusive_bytes(&root.join("data"));
    let t0 = Instant::now();
    let done_loose = defragd_file(&loose, THRESH, CHUNK);
    let done_kept = defragd_file(&kept, THRESH, CHUNK);
    let defragd_time = t0.elapsed();
    let excl_after = exclusive_bytes(&root.join("data"));
    let after = (filefrag_extents(&loose), filefrag_extents(&kept));
    eprintln!(
        "defragd: loose {} -> {} extents, kept {} -> {} (snapshot), data exclusive {} -> {} \
         bytes, {:.2} s; {done_loose:?}; kept: {done_kept:?}",
        before.0,
        after.0,
        before.1,
        after.1,
        excl_before,
        excl_after,
        defragd_time.as_secs_f64()
    );
    assert!(
        matches!(done_loose, Done::Defragmented { .. }),
        "{done_loose:?}"
    );
    match &done_kept {
        Done::Skipped {
            reason: SkipReason::SharedExtents,
            selection: Some(s),
        } => assert!(s.shared_bytes >= FILE_SIZE, "shared bytes counted: {s:?}"),
        other => panic!("the snapshotted file should be left shared: {other:?}"),
    }
    assert!(
        after.0 * 10 <= before.0,
        "loose: {} -> {}",
        before.0,
        after.0
    );
    assert_eq!(after.1, before.1, "the shared file was not touched");
    assert!(
        excl_after <= excl_before + 4 * MIB,
        "sharing lost: exclusive {excl_before} -> {excl_after}"
    );
    assert_eq!(md5(&loose), sum_loose);
    assert_eq!(md5(&kept), sum_kept);
    img.unmount_and_fsck();

    // `btrfs filesystem defragment -r` on the clone, as it was before.
    let mut twin = LoopImage::adopt(common::tempdir(), clone, spec(0, None));
    let troot = twin.root().to_path_buf();
    let excl_before = exclusive_bytes(&troot.join("data"));
    let t0 = Instant::now();
    for dir in [troot.join("loose"), troot.join("data")] {
        sh(
            "btrfs",
            [
                OsStr::new("filesystem"),
                OsStr::new("defragment"),
                OsStr::new("-r"),
                dir.as_os_str(),
            ],
        );
    }
    btrfs_filesystem_sync(&troot);
    let btrfs_time = t0.elapsed();
    let excl_after = exclusive_bytes(&troot.join("data"));
    let tafter = (
        filefrag_extents(&troot.join("loose")),
        filefrag_extents(&troot.join("data/kept")),
    );
    eprintln!(
        "btrfs filesystem defragment: loose {} -> {} extents, kept {} -> {}, data exclusive {} \
         -> {} bytes, {:.2} s",
        before.0,
        tafter.0,
        before.1,
        tafter.1,
        excl_before,
        excl_after,
        btrfs_time.as_secs_f64()
    );
    assert_eq!(md5(&troot.join("loose")), sum_loose);
    assert_eq!(md5(&troot.join("data/kept")), sum_kept);
    twin.unmount_and_fsck();
}

#[test]
fn a_compressed_file_stays_compressed() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(spec(1024, Some("compress=zstd")));
    let root = img.root().to_path_buf();
    let file = root.join("logs");
    interleave(
        std::slice::from_ref(&file),
        32 * MIB,
        128 * 1024,
        &text_fill,
    );
    // btrfs keeps extents of different sizes in different block groups,
    // so an incompressible filler never lands between compressed
    // extents. Rewriting every other 128 KiB does fragment the file: the
    // new compressed extents go past its end, apart from their neighbours.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open for rewrite");
        let mut buf = vec![0u8; 128 * 1024];
        for n in (1..256u64).step_by(2) {
            text_fill(7, n, &mut buf);
            f.write_all_at(&buf, n * 128 * 1024).expect("rewrite");
            f.sync_all().expect("fsync");
        }
    }
    let sum = md5(&file);
    img.unmount();
    let (_clone_dir, clone) = clone_image(img.image_path());
    img.mount();
    let map_before =
        sys::fiemap(File::open(&file).expect("open").as_fd(), Flush::Yes).expect("fiemap");
    let pieces_before = backend::pieces(&map_before).len();
    assert!(map_before.iter().all(|e| e.flags.is_encoded()));
    let done = defragd_file(&file, THRESH, 8 * MIB);
    let Done::Defragmented { selection, chunks } = &done else {
        panic!("not defragmented: {done:?}");
    };
    assert!(selection.has_compressed(), "{selection:?}");
    btrfs_filesystem_sync(&root);
    let map_after =
        sys::fiemap(File::open(&file).expect("open").as_fd(), Flush::Yes).expect("fiemap");
    let pieces_after = backend::pieces(&map_after).len();
    eprintln!(
        "compressed: {} FIEMAP extents in {pieces_before} pieces -> {} in {pieces_after} \
         pieces, {chunks} chunks",
        map_before.len(),
        map_after.len()
    );
    assert!(
        map_after.iter().all(|e| e.flags.is_encoded()),
        "some data was rewritten uncompressed"
    );
    assert!(
        pieces_after < pieces_before,
        "{pieces_before} -> {pieces_after}"
    );
    assert_eq!(md5(&file), sum);
    img.unmount_and_fsck();

    // btrfs filesystem defragment on the clone: without -c it leaves
    // full-size compressed extents alone; with -czstd it rewrites them.
    let mut twin = LoopImage::adopt(common::tempdir(), clone, spec(0, Some("compress=zstd")));
    let tfile = twin.root().join("logs");
    let pieces_of = |path: &Path| {
        let map = sys::fiemap(File::open(path).expect("open").as_fd(), Flush::Yes).expect("fiemap");
        let encoded = map.iter().all(|e| e.flags.is_encoded());
        (backend::pieces(&map).len(), encoded)
    };
    let mut figures = Vec::new();
    for args in [
        &["filesystem", "defragment"][..],
        &["filesystem", "defragment", "-czstd"],
    ] {
        let mut cmd = Command::new("btrfs");
        run_ok(cmd.args(args).arg(&tfile));
        btrfs_filesystem_sync(twin.root());
        figures.push((args.join(" "), pieces_of(&tfile)));
    }
    eprintln!("compressed, btrfs from {pieces_before} pieces: {figures:?}");
    // Small compressed extents fill whatever holes the allocator finds
    // first (after this remount, those the rewrites left): btrfs' own
    // compressing defrag does no better than defragd; without -c it does
    // nothing at all, which is why defragd passes the compression on.
    assert_eq!(figures[0].1, (pieces_before, true));
    assert!(figures[1].1 .1, "btrfs -czstd kept compression");
    assert!(
        pieces_after <= figures[1].1 .0,
        "{pieces_after} vs {figures:?}"
    );
    assert_eq!(md5(&tfile), sum);
    twin.unmount_and_fsck();
}

/// The facts and refusals of `path`, opened read-only.
fn refusal(path: &Path) -> (FileFacts, Result<(), &'static str>) {
    let file = File::open(path).expect("open");
    let facts = FileFacts::probe(file.as_fd(), false).expect("probe");
    let verdict = backend::refuse_unmovable(&facts, false).map_err(|r| r.code());
    (facts, verdict)
}

#[test]
fn refusals_are_decided_before_anything_is_written() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(spec(512, None));
    let root = img.root().to_path_buf();
    btrfs_subvolume(&root.join("data"));
    let plain = root.join("data/plain");
    interleave(std::slice::from_ref(&plain), 4 * MIB, PIECE, &random_fill);
    btrfs_snapshot_ro(&root.join("data"), &root.join("snap"));

    let (facts, verdict) = refusal(&plain);
    assert_eq!(verdict, Ok(()));
    let (snap_facts, verdict) = refusal(&root.join("snap/plain"));
    assert_eq!(verdict, Err("read_only_subvolume"));
    // One inode number in two subvolumes: the subvolume tells them apart.
    assert_eq!(
        std::fs::metadata(&plain)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok(),
        std::fs::metadata(root.join("snap/plain"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    );
    assert_ne!(facts.subvolume.id, snap_facts.subvolume.id);
    let rootid = sh(
        "btrfs",
        [
            OsStr::new("inspect-internal"),
            OsStr::new("rootid"),
            plain.as_os_str(),
        ],
    );
    assert_eq!(rootid.trim(), facts.subvolume.id.to_string());
    assert_eq!((facts.property, facts.mount_compression), (None, None));

    // The compression property, as `btrfs property` sets it.
    sh(
        "btrfs",
        [
            OsStr::new("property"),
            OsStr::new("set"),
            plain.as_os_str(),
            OsStr::new("compression"),
            OsStr::new("zstd"),
        ],
    );
    let (facts, _) = refusal(&plain);
    assert_eq!(facts.property, Some(defragd::btrfs::CompressType::Zstd));
    assert_eq!(
        backend::compression_for(&facts),
        Ok(defragd::btrfs::CompressType::Zstd)
    );

    // Too little free space, as btrfs counts it: refused before writing.
    let f = File::open(&plain).expect("open");
    match defragd::backend::check_free_space(f.as_fd(), 4096 * MIB, 0.0) {
        Err(defragd::outcome::Refusal::Skip(r)) => assert_eq!(r.code(), "not_enough_free_space"),
        other => panic!("4 GiB on a 512 MiB filesystem: {other:?}"),
    }
    defragd::backend::check_free_space(f.as_fd(), MIB, 0.0).expect("1 MiB fits");
    drop(f);
    assert_eq!(snap_facts.subvolume.parent_uuid, Some(facts.subvolume.uuid));
    // The kernel refuses too (EROFS), but only once asked to write.
    let snap_file = File::open(root.join("snap/plain")).expect("open");
    let request = defragd::btrfs::Defrag {
        start: 0,
        len: std::num::NonZeroU64::new(MIB).expect("non-zero"),
        extent_thresh: THRESH,
        compress: None,
    };
    assert_eq!(
        defragd::btrfs::defrag_range(snap_file.as_fd(), &request),
        Err(sys::Error::ReadOnly)
    );
    drop(snap_file);

    // A writer holds the file.
    {
        let _writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&plain)
            .expect("open for writing");
        assert_eq!(refusal(&plain).1, Err("busy"));
    }
    assert_eq!(refusal(&plain).1, Ok(()));

    // nodatacow: set on the empty file, before its data.
    let nocow = root.join("data/nocow");
    File::create(&nocow).expect("create");
    sh("chattr", [OsStr::new("+C"), nocow.as_os_str()]);
    interleave(std::slice::from_ref(&nocow), MIB, PIECE, &random_fill);
    assert_eq!(refusal(&nocow).1, Err("nocow"));

    // An active swap file (nodatacow, as btrfs requires).
    let swap = root.join("swapfile");
    File::create(&swap).expect("create");
    sh("chattr", [OsStr::new("+C"), swap.as_os_str()]);
    run_ok(Command::new("fallocate").args(["-l", "16M"]).arg(&swap));
    {
        let _on = common::SwapGuard::activate(&swap);
        assert_eq!(refusal(&swap).1, Err("swapfile"));
    }
    eprintln!(
        "refusals: read_only_subvolume, busy, nocow, swapfile, not_enough_free_space; \
         subvolumes {} (data) and {} (its snapshot)",
        facts.subvolume.id, snap_facts.subvolume.id
    );
    img.unmount_and_fsck();
}

/// A sparse copy of the image as it is on "disk" right now, as a power
/// cut would leave it: the loop device writes with direct I/O, so every
/// write it acknowledged is in the image file.
fn power_cut_copy(img: &Path, dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(img)
            .arg(&copy),
    );
    copy
}

#[test]
fn an_fsync_makes_the_rewrite_survive_a_power_cut() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(spec(1024, None));
    let root = img.root().to_path_buf();
    let (file, filler) = (root.join("file"), root.join("filler"));
    interleave(
        &[file.clone(), filler.clone()],
        32 * MIB,
        PIECE,
        &random_fill,
    );
    std::fs::remove_file(&filler).expect("delete filler");
    btrfs_filesystem_sync(&root);
    let (sum, before) = (md5(&file), filefrag_extents(&file));

    let f = File::open(&file).expect("open");
    let fd = f.as_fd();
    let map = sys::fiemap(fd, Flush::Yes).expect("fiemap");
    let selection = backend::select(&map, 4096, u64::from(THRESH));
    let defrag = BtrfsDefrag::new(&selection, THRESH, None);
    for chunk in defrag.chunks(plan::chunk_blocks(8 * MIB, 4096), 0, 4096) {
        defrag.relocate(fd, &chunk, 4096).expect("DEFRAG_RANGE");
    }
    let copies = common::tempdir();
    let unsynced = power_cut_copy(img.image_path(), copies.path(), "unsynced.img");
    defrag.make_durable(fd).expect("fsync");
    let synced = power_cut_copy(img.image_path(), copies.path(), "synced.img");
    let live = filefrag_extents(&file);
    drop(f);
    img.unmount_and_fsck();

    // Each copy mounted alone (same fsid as the original, now detached):
    // the mount replays the log tree, as after a reboot.
    let log_root = |img: &Path| {
        let out = sh(
            "btrfs",
            [
                OsStr::new("inspect-internal"),
                OsStr::new("dump-super"),
                img.as_os_str(),
            ],
        );
        out.lines()
            .find(|l| l.starts_with("log_root\t") || l.starts_with("log_root "))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_default()
    };
    // Which way the fsync went: through the log tree (log_root set) or a
    // full transaction commit (log_root 0).
    eprintln!(
        "log_root of the copy after the fsync: {}",
        log_root(&synced)
    );
    let mut seen = Vec::new();
    for copy in [unsynced, synced] {
        let dir = common::tempdir();
        let mut cut = LoopImage::adopt(dir, copy, spec(0, None));
        let path = cut.root().join("file");
        seen.push(filefrag_extents(&path));
        assert_eq!(md5(&path), sum, "data lost at the power cut");
        cut.unmount_and_fsck();
    }
    eprintln!(
        "power cut: {before} extents before, {live} live after the fsync; after a cut before \
         the fsync {}, after it {}",
        seen[0], seen[1]
    );
    assert!(live * 10 <= before, "{before} -> {live}");
    assert_eq!(seen[1], live, "the fsync'd layout did not survive the cut");
}

#[test]
fn a_partly_reflinked_file_is_defragmented_where_it_is_not_shared() {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(spec(1024, None));
    let root = img.root().to_path_buf();
    let (file, filler, copy) = (root.join("file"), root.join("filler"), root.join("copy"));
    interleave(
        &[file.clone(), filler.clone()],
        32 * MIB,
        PIECE,
        &random_fill,
    );
    std::fs::remove_file(&filler).expect("delete filler");
    // A reflinked copy whose second half is then overwritten: the file's
    // first half stays shared with it, its second half is its own again.
    run_ok(
        Command::new("cp")
            .arg("--reflink=always")
            .arg(&file)
            .arg(&copy),
    );
    {
        use std::os::unix::fs::FileExt;
        let c = std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .expect("open copy");
        let mut buf = vec![0u8; 16 * MIB as usize];
        random_fill(9, 0, &mut buf);
        c.write_all_at(&buf, 16 * MIB).expect("overwrite");
        c.sync_all().expect("fsync");
    }
    let sum = md5(&file);
    let excl_before = exclusive_bytes(&file);
    let done = defragd_file(&file, THRESH, 8 * MIB);
    let Done::Defragmented { selection, .. } = &done else {
        panic!("not defragmented: {done:?}");
    };
    let excl_after = exclusive_bytes(&file);
    let map = sys::fiemap(File::open(&file).expect("open").as_fd(), Flush::Yes).expect("fiemap");
    let after = backend::select(&map, 4096, u64::from(THRESH));
    eprintln!(
        "reflinked: targets {:?}, shared {} bytes; after: {} pieces ({} shared bytes), file \
         exclusive {excl_before} -> {excl_after}",
        selection.targets, selection.shared_bytes, after.pieces, after.shared_bytes
    );
    assert_eq!(selection.shared_bytes, 16 * MIB);
    assert_eq!(selection.targets.len(), 1);
    assert_eq!(selection.targets[0].range.start, 16 * MIB / 4096);
    assert_eq!(
        after.shared_bytes,
        16 * MIB,
        "the shared half stayed shared"
    );
    assert!(
        after.targets.is_empty(),
        "the unshared half is whole: {after:?}"
    );
    assert!(
        excl_after <= excl_before + 4 * MIB,
        "{excl_before} -> {excl_after}"
    );
    assert_eq!(md5(&file), sum);
    img.unmount_and_fsck();
}
