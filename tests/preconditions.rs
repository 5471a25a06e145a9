//! Every precondition that forbids a move gives its own clear skip (a
//! reason_code in --json, a non-empty message in both outputs), exit status
//! 0, and leaves the file exactly as it was. Each file under test is
//! otherwise a good candidate (really fragmented, contiguous free space
//! available), so the precondition is the only reason to skip it.
//! Also: --dry-run changes nothing; a tree walk neither follows symlinks nor
//! crosses mounts nor enters lost+found; usage errors exit 2.

use defragd_testkit as common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;

/// A fresh image of `spec` with one fragmented file `name` of `mib` MiB and
/// contiguous free space beside it.
fn image_with_fragmented_file(spec: ImageSpec, name: &str, mib: u64) -> (LoopImage, PathBuf) {
    let mut img = LoopImage::create(spec);
    let path = img.root().join(name);
    make_fragmented_files(img.root(), &[(&path, mib * MIB, 0xf00d + mib)], 2 * MIB)
        .delete_all(img.root());
    img.settle();
    (img, path)
}

/// What "the file is left exactly as it was" can be checked by.
#[derive(Clone, Copy)]
enum Unchanged {
    /// Content and identity: all a non-ext4 file can tell.
    Content,
    /// Content, identity, generation and layout: an ext4 file.
    ContentAndLayout,
    /// Identity and the exact physical blocks, not the bytes: an active
    /// swapfile, which the kernel writes swapped-out pages into whenever
    /// memory is short. What defragd must never change is where it lives.
    Blocks,
}

#[derive(Debug, PartialEq)]
enum Observed {
    Content(BasicState),
    ContentAndLayout(FileState),
    Blocks {
        ino: u64,
        mtime: String,
        ctime: String,
        generation: u64,
        size: u64,
        extents: Vec<Extent>,
    },
}

fn observe(path: &Path, how: Unchanged) -> Observed {
    match how {
        Unchanged::Content => Observed::Content(basic_state(path)),
        Unchanged::ContentAndLayout => Observed::ContentAndLayout(file_state(path)),
        Unchanged::Blocks => {
            let (ino, mtime, ctime) = stat_ids(path);
            Observed::Blocks {
                ino,
                mtime,
                ctime,
                generation: generation(path),
                size: fs::metadata(path).expect("metadata").len(),
                extents: fiemap(path),
            }
        }
    }
}

/// Runs `defragd defrag [--json] EXTRA... path` and checks the skip: exit 0,
/// outcome "skipped" with `code` and a message, a human line that says so,
/// and nothing about the file changed, as `how` can tell.
fn assert_skipped(path: &Path, code: &str, extra: &[&str], how: Unchanged) -> DefragFile {
    let before = observe(path, how);

    let mut args: Vec<&std::ffi::OsStr> = vec!["defrag".as_ref(), "--json".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    let run = defragd(args);
    // Whatever defragd decided, the file must be intact: check that first.
    assert_eq!(
        observe(path, how),
        before,
        "{}: data, identity or layout changed\n{}",
        path.display(),
        run.stdout
    );
    let report: DefragReport = run.json();
    let f = report.find(path).cloned().unwrap_or_else(|| {
        panic!(
            "no entry for {} in defragd's JSON:\n{}",
            path.display(),
            run.stdout
        )
    });
    eprintln!(
        "{}: {} {:?} {:?}",
        path.display(),
        f.outcome,
        f.reason_code,
        f.reason
    );
    assert_eq!(
        f.outcome,
        "skipped",
        "{}: want skipped ({code}), got {f:?}",
        path.display()
    );
    run.assert_code(0);
    assert_eq!(
        f.reason_code.as_deref(),
        Some(code),
        "{}: wrong reason_code: {f:?}",
        path.display()
    );
    assert!(
        f.reason.as_deref().is_some_and(|r| !r.trim().is_empty()),
        "{}: skipped without a human reason: {f:?}",
        path.display()
    );
    assert_eq!(
        f.bytes_moved,
        0,
        "{}: skipped but moved bytes",
        path.display()
    );
    assert_eq!(report.summary.skipped, 1, "summary: {:?}", report.summary);
    assert_eq!(
        report.summary.defragmented, 0,
        "summary: {:?}",
        report.summary
    );
    assert_eq!(report.summary.failed, 0, "summary: {:?}", report.summary);

    // Human output: a line starting with the outcome word, with some reason.
    let mut args: Vec<&std::ffi::OsStr> = vec!["defrag".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    let human = defragd(args);
    human.assert_code(0);
    let line = human
        .stdout
        .lines()
        .chain(human.stderr.lines())
        .find(|l| l.trim_start().starts_with("skipped"))
        .unwrap_or_else(|| {
            panic!(
                "no 'skipped' line in human output:\n{}\n{}",
                human.stdout, human.stderr
            )
        });
    let why = line
        .replacen("skipped", "", 1)
        .replace(path.to_str().expect("utf-8 path"), "");
    assert!(
        why.chars().any(char::is_alphabetic),
        "the human line gives no reason: {line:?}"
    );
    eprintln!("human: {line}");

    assert_eq!(
        observe(path, how),
        before,
        "{}: data, identity or layout changed",
        path.display()
    );
    f
}

#[test]
fn block_mapped_file_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) =
        image_with_fragmented_file(ImageSpec::ext4(256).kind(FsKind::Ext3AsExt4), "old.bin", 16);
    assert_skipped(&path, "block_mapped", &[], Unchanged::ContentAndLayout);
    let check = check_json(false, &[&path]);
    eprintln!("check: {:?}", check.files);
    assert!(
        check.files.iter().all(|f| f.block_mapped),
        "check does not say block_mapped: {:?}",
        check.files
    );
    img.unmount_and_fsck();
}

#[test]
fn immutable_file_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "frozen.bin", 16);
    {
        let _i = ChattrGuard::set(&path, 'i');
        assert_skipped(&path, "immutable", &[], Unchanged::ContentAndLayout);
    }
    img.unmount_and_fsck();
}

#[test]
fn append_only_file_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "journal.log", 16);
    {
        let _a = ChattrGuard::set(&path, 'a');
        assert_skipped(&path, "append_only", &[], Unchanged::ContentAndLayout);
    }
    img.unmount_and_fsck();
}

#[test]
fn active_swapfile_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "swapfile", 16);
    {
        let _swap = SwapGuard::activate(&path);
        assert!(fs::read_to_string("/proc/swaps")
            .expect("/proc/swaps")
            .contains(path.to_str().expect("utf-8 path")));
        assert_skipped(&path, "swapfile", &[], Unchanged::Blocks);
    }
    img.unmount_and_fsck();
}

#[test]
fn data_journal_mount_is_skipped() {
    if !require_root() {
        return;
    }
    let spec = ImageSpec::ext4(256).mount_opts("data=journal");
    let (mut img, path) = image_with_fragmented_file(spec, "journaled.bin", 16);
    assert_skipped(&path, "data_journal", &[], Unchanged::ContentAndLayout);
    img.unmount_and_fsck();
}

#[test]
fn bigalloc_filesystem_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(
        ImageSpec::ext4(256).kind(FsKind::Ext4Bigalloc),
        "clustered.bin",
        16,
    );
    assert_skipped(&path, "bigalloc", &[], Unchanged::ContentAndLayout);
    img.unmount_and_fsck();
}

#[test]
fn read_only_mount_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "ro.bin", 16);
    img.remount("ro");
    assert_skipped(&path, "read_only", &[], Unchanged::ContentAndLayout);
    img.unmount_and_fsck();
}

#[test]
fn symlink_is_skipped_and_its_target_untouched() {
    if !require_root() {
        return;
    }
    let (mut img, target) = image_with_fragmented_file(ImageSpec::ext4(256), "target.bin", 16);
    let link = img.root().join("link");
    symlink(&target, &link).expect("symlink");
    let target_before = file_state(&target);
    let link_ino = lino(&link);
    assert_skipped(&link, "symlink", &[], Unchanged::Content);
    assert_eq!(
        file_state(&target),
        target_before,
        "the symlink's target changed"
    );
    assert_eq!(lino(&link), link_ino, "the symlink itself was replaced");
    assert_eq!(fs::read_link(&link).expect("readlink"), target);
    img.unmount_and_fsck();
}

#[test]
fn fifo_is_skipped_as_not_regular() {
    if !require_root() {
        return;
    }
    let img = LoopImage::create(ImageSpec::ext4(256));
    let fifo = img.root().join("fifo");
    sh("mkfifo", [&fifo]);
    // Opening a FIFO for reading blocks without a writer: a hang here means
    // defragd opened it (run_timed kills it and fails after RUN_LIMIT).
    let (report, _) = defrag_json(&[], &[&fifo], 0);
    let f = report.file(&fifo);
    eprintln!("fifo: {f:?}");
    assert_eq!(
        (f.outcome.as_str(), f.reason_code.as_deref()),
        ("skipped", Some("not_regular"))
    );
}

#[test]
fn file_on_tmpfs_is_skipped_as_unsupported_filesystem() {
    if !require_root() {
        return;
    }
    let tmpfs = MountGuard::tmpfs(64);
    let path = tmpfs.root().join("ram.bin");
    write_seeded_file(&path, 4 * MIB, 7);
    let file = assert_skipped(&path, "unsupported_filesystem", &[], Unchanged::Content);
    // The message names the type found and the types supported.
    let reason = format!("{:?}", file.reason);
    assert!(
        reason.contains("tmpfs") && reason.contains("it works on ext4"),
        "{reason}"
    );
}

#[test]
fn file_below_one_block_is_skipped_as_too_small() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let path = img.root().join("tiny");
    write_fsynced(&path, &Seeded::new(3).bytes(100), 100);
    assert_skipped(&path, "too_small", &[], Unchanged::ContentAndLayout);
    img.unmount_and_fsck();
}

#[test]
fn too_little_free_space_above_the_reserve_is_skipped() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "big.bin", 40);
    let root = img.root().to_path_buf();
    let size = fs::metadata(&path).expect("stat").len();
    // 5 %: the default --reserve-percent. Leave free the file plus half the
    // reserve: enough for a donor, not once the reserve is kept.
    let reserve = fs_bytes(&root) * 5 / 100;
    let want_free = size + reserve / 2;
    let ballast = root.join("ballast");
    let len = free_bytes(&root) - want_free;
    sh(
        "fallocate",
        [
            "-l".to_string(),
            len.to_string(),
            ballast.display().to_string(),
        ],
    );
    sync_fs(&root);
    eprintln!(
        "file {} MiB, free {:.1} MiB, reserve (5%) {:.1} MiB, fs {} MiB",
        size / MIB,
        free_bytes(&root) as f64 / MIB as f64,
        reserve as f64 / MIB as f64,
        fs_bytes(&root) / MIB
    );
    assert!(
        free_bytes(&root) > size && free_bytes(&root) < size + reserve,
        "ballast missed its target"
    );

    assert_skipped(
        &path,
        "not_enough_free_space",
        &[],
        Unchanged::ContentAndLayout,
    );

    // Without the reserve there is room: whatever happens, it is not this skip.
    let before = md5(&path);
    let (report, _) = defrag_json(&["--reserve-percent", "0"], &[&path], 0);
    let f = report.file(&path);
    eprintln!(
        "with --reserve-percent 0: {} {:?}",
        f.outcome, f.reason_code
    );
    assert_ne!(
        f.reason_code.as_deref(),
        Some("not_enough_free_space"),
        "the reserve is not what decides: {f:?}"
    );
    assert_eq!(md5(&path), before, "content changed");
    img.unmount_and_fsck();
}

#[test]
fn fragmented_free_space_gives_no_gain_and_is_skipped() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(512));
    let root = img.root().to_path_buf();
    let path = root.join("stuck.bin");
    // The file goes into 64 KiB holes; then what is still free is cut into
    // 32 KiB holes, and all filler stays: any donor the allocator can make
    // now has about twice the file's pieces. (Only ext4's ~2 % reserved
    // clusters can remain in larger pieces, far too few to matter.)
    let coarse = make_fragmented_files(&root, &[(&path, 24 * MIB, 99)], 0);
    let fine = fragment_free_space_with(&root, "filler-32k", 32 * KIB, 0);
    img.settle();
    let freefrag = sh("e2freefrag", [img.device().expect("device")]);
    eprintln!(
        "file: {} extents; {} + {} filler files kept, free {} MiB; {}",
        filefrag_extents(&path),
        coarse.count(),
        fine.count(),
        free_bytes(&root) / MIB,
        freefrag
            .lines()
            .filter(|l| l.contains("free extent"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert_skipped(
        &path,
        "no_contiguous_free_space",
        &[],
        Unchanged::ContentAndLayout,
    );
    img.unmount_and_fsck();
}

#[test]
fn dry_run_changes_nothing() {
    if !require_root() {
        return;
    }
    let (mut img, path) = image_with_fragmented_file(ImageSpec::ext4(256), "candidate.bin", 24);
    let before = file_state(&path);
    let (report, run) = defrag_json(&["--dry-run"], &[&path], 0);
    let f = report.file(&path);
    eprintln!("dry run: {f:?}");
    assert_eq!(f.outcome, "would_defragment", "{f:?}");
    assert_eq!(f.bytes_moved, 0);
    assert_eq!(report.summary.bytes_moved, 0);
    assert_eq!(report.summary.defragmented, 0);
    assert!(
        f.extents_before
            .is_some_and(|n| before.is_an_extent_count(n)),
        "extents_before {:?}, filefrag says {} ({} FIEMAP extents)",
        f.extents_before,
        before.extents,
        before.fiemap_extents
    );
    assert_eq!(file_state(&path), before, "--dry-run changed the file");
    let human = defragd(["defrag".as_ref(), "--dry-run".as_ref(), path.as_os_str()]);
    human.assert_code(0);
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("would_defragment")
                || l.trim_start().starts_with("would defragment")),
        "no 'would defragment' line:\n{}",
        human.stdout
    );
    assert_eq!(file_state(&path), before, "--dry-run changed the file");
    eprintln!("{:.2}s", run.elapsed.as_secs_f64());
    img.unmount_and_fsck();
}

#[test]
fn tree_walk_stays_on_its_filesystem_and_off_symlinks_and_lost_found() {
    if !require_root() {
        return;
    }
    let mut outer = LoopImage::create(ImageSpec::ext4(256));
    let mut inner = LoopImage::create(ImageSpec::ext4(256));
    let root = outer.root().to_path_buf();
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("sub")).expect("mkdir");
    let inside = tree.join("inside.bin");
    let outside = root.join("outside.bin");
    let lost = root.join("lost+found").join("#1234");
    make_fragmented_files(
        &root,
        &[
            (&inside, 8 * MIB, 1),
            (&outside, 8 * MIB, 2),
            (&lost, 8 * MIB, 3),
        ],
        2 * MIB,
    )
    .delete_all(&root);
    outer.settle();
    let nested = inner.root().join("nested.bin");
    make_fragmented_files(inner.root(), &[(&nested, 8 * MIB, 4)], 2 * MIB).delete_all(inner.root());
    inner.settle();
    symlink(&outside, tree.join("link-to-outside")).expect("symlink");
    let outside_before = file_state(&outside);
    let lost_before = file_state(&lost);
    let nested_before = file_state(&nested);
    let inside_before = file_state(&inside);
    {
        let bind = MountGuard::bind(inner.root(), &tree.join("sub"));
        let nested_via_tree = bind.root().join("nested.bin");

        // The tree: inside.bin only; not the symlink's target, not the
        // filesystem mounted inside the tree.
        let (report, _) = defrag_json(&[], &[&tree], 0);
        for f in &report.files {
            eprintln!("tree: {} {} {:?}", f.path, f.outcome, f.reason_code);
        }
        let f = report.file(&inside);
        assert_eq!(f.outcome, "defragmented", "{f:?}");
        let inside_after = file_state(&inside);
        assert!(
            inside_after.extents < inside_before.extents,
            "filefrag: {} -> {}",
            inside_before.extents,
            inside_after.extents
        );
        assert_eq!(inside_after.md5, inside_before.md5);
        assert!(
            report
                .find(&nested_via_tree)
                .is_none_or(|f| f.outcome == "skipped"),
            "defragd crossed into a nested mount: {:?}",
            report.find(&nested_via_tree)
        );
        if let Some(f) = report.find(&tree.join("link-to-outside")) {
            assert_eq!(f.outcome, "skipped", "symlink in a tree: {f:?}");
        }
        assert_eq!(
            file_state(&outside),
            outside_before,
            "defragd followed a symlink out of the tree"
        );
        assert_eq!(
            file_state(&nested),
            nested_before,
            "defragd crossed into a nested mount"
        );

        // The whole filesystem from its root: lost+found is not entered,
        // the nested mount still not crossed.
        let (report, _) = defrag_json(&[], &[&root], 0);
        for f in &report.files {
            eprintln!("root: {} {} {:?}", f.path, f.outcome, f.reason_code);
            assert!(
                !f.path.contains("lost+found"),
                "defragd entered lost+found: {f:?}"
            );
        }
        assert_eq!(report.file(&outside).outcome, "defragmented");
        assert_eq!(md5(&outside), outside_before.md5);
        assert_eq!(
            file_state(&lost),
            lost_before,
            "defragd touched a file in lost+found"
        );
        assert_eq!(
            file_state(&nested),
            nested_before,
            "defragd crossed into a nested mount"
        );
    }
    inner.unmount_and_fsck();
    outer.unmount_and_fsck();
}

#[test]
fn usage_errors_exit_2() {
    // No root needed: nothing is touched.
    for args in [
        vec!["defrag"],
        vec!["defrag", "--chunk-mib", "lots", "/tmp"],
        vec!["defrag", "--no-such-option", "/tmp"],
        vec!["no-such-command"],
    ] {
        let run = defragd(&args);
        eprintln!(
            "defragd {args:?} -> {} ({})",
            run.code,
            run.stderr.lines().next().unwrap_or("")
        );
        assert_eq!(
            run.code, 2,
            "defragd {args:?}: want exit 2\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert!(
            !run.stderr.trim().is_empty(),
            "defragd {args:?}: usage error without a message"
        );
    }
}
