//! Each refusal on XFS with its reason code through `defragd defrag
//! --json` (and a `skipped` line with a reason in the human output), exit
//! status 0, the file left as it was. Every file under test is otherwise
//! a good candidate (fragmented, contiguous free space beside it), so the
//! refusal is the only reason to skip it (as tests/preconditions.rs does
//! on ext4).
//!
//! Not here: `realtime`. A realtime file needs a filesystem with a
//! realtime device (`mkfs.xfs -r rtdev=...`), and this kernel's XFS does
//! not mount one from a second loop device in these images; the flag's
//! refusal is unit-tested in daemon/backend/xfs/eligibility.rs.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::common::*;
use super::xfs_with_fragmented;

/// What must not change about a refused file.
#[derive(Debug, PartialEq)]
struct Untouched {
    /// None for an active swap file: the kernel may write pages into it;
    /// what defragd must never change is where it lives.
    md5: Option<String>,
    ids: (u64, String, String),
    map: Vec<Extent>,
}

fn observe(path: &Path, content: bool) -> Untouched {
    Untouched {
        md5: content.then(|| md5(path)),
        ids: stat_ids(path),
        map: fiemap(path),
    }
}

/// Runs `defragd defrag --json EXTRA... PATH` and the human form; asserts
/// the skip with `code`, a reason, nothing moved, the file untouched.
fn assert_refused(path: &Path, code: &str, extra: &[&str], content: bool) {
    let before = observe(path, content);
    let (report, _) = defrag_json(extra, &[path], 0);
    assert_eq!(
        observe(path, content),
        before,
        "{}: content, identity or layout changed",
        path.display()
    );
    let f = report.file(path);
    eprintln!(
        "{}: {} {:?} {:?}",
        path.display(),
        f.outcome,
        f.reason_code,
        f.reason
    );
    assert_eq!(
        (f.outcome.as_str(), f.reason_code.as_deref()),
        ("skipped", Some(code)),
        "{}: {f:?}",
        path.display()
    );
    assert!(
        f.reason.as_deref().is_some_and(|r| !r.trim().is_empty()),
        "skipped without a reason: {f:?}"
    );
    assert_eq!(f.bytes_moved, 0, "skipped but moved bytes: {f:?}");
    assert_eq!(report.summary.skipped, 1, "{:?}", report.summary);

    let mut args: Vec<&OsStr> = vec![OsStr::new("defrag")];
    args.extend(extra.iter().map(OsStr::new));
    args.push(path.as_os_str());
    let human = defragd(args);
    human.assert_code(0);
    let line = human
        .stdout
        .lines()
        .chain(human.stderr.lines())
        .find(|l| l.trim_start().starts_with("skipped"))
        .unwrap_or_else(|| panic!("no 'skipped' line:\n{}\n{}", human.stdout, human.stderr));
    let why = line
        .replacen("skipped", "", 1)
        .replace(&*path.to_string_lossy(), "");
    assert!(
        why.chars().any(char::is_alphabetic),
        "no reason in {line:?}"
    );
    assert_eq!(observe(path, content), before, "{}", path.display());
}

/// An XFS extended flag set with `xfs_io -c 'chattr +X'`; Drop clears it.
struct XflagGuard {
    path: PathBuf,
    flag: char,
}

impl XflagGuard {
    fn set(path: &Path, flag: char) -> XflagGuard {
        xfs_chattr(path, &format!("+{flag}"));
        XflagGuard {
            path: path.to_path_buf(),
            flag,
        }
    }
}

fn xfs_chattr(path: &Path, change: &str) {
    sh(
        "xfs_io",
        [
            OsStr::new("-c"),
            OsStr::new(&format!("chattr {change}")),
            path.as_os_str(),
        ],
    );
}

impl Drop for XflagGuard {
    fn drop(&mut self) {
        let (ok, _, err) = sh_status(
            "xfs_io",
            [
                OsStr::new("-c"),
                OsStr::new(&format!("chattr -{}", self.flag)),
                self.path.as_os_str(),
            ],
        );
        if !ok {
            eprintln!("xfs_io chattr -{} failed: {}", self.flag, err.trim());
        }
    }
}

#[test]
fn flags_reflinks_a_swap_file_free_space_and_a_read_only_mount_are_refused() {
    if !require_root() {
        return;
    }
    let mib = 8 * MIB;
    let (mut img, paths) = xfs_with_fragmented(
        384,
        &[
            ("nodefrag.bin", mib, 1),
            ("frozen.bin", mib, 2),
            ("journal.log", mib, 3),
            ("shared.bin", mib, 4),
            ("swapfile", mib, 5),
            ("big.bin", 40 * MIB, 6),
        ],
    );
    let root = img.root().to_path_buf();
    for p in &paths {
        eprintln!(
            "{}: {} extents (xfs_bmap)",
            p.display(),
            xfs_bmap_extents(p)
        );
    }
    let [nodefrag, frozen, journal, shared, swapfile, big] = &paths[..] else {
        unreachable!("six files")
    };

    {
        let _f = XflagGuard::set(nodefrag, 'f');
        assert_refused(nodefrag, "no_defrag_flag", &[], true);
    }
    {
        let _i = ChattrGuard::set(frozen, 'i');
        assert_refused(frozen, "immutable", &[], true);
    }
    {
        let _a = ChattrGuard::set(journal, 'a');
        assert_refused(journal, "append_only", &[], true);
    }
    let copy = root.join("shared.copy");
    sh(
        "cp",
        [
            OsStr::new("--reflink=always"),
            shared.as_os_str(),
            copy.as_os_str(),
        ],
    );
    assert_refused(shared, "shared_extents", &[], true);
    assert_eq!(md5(&copy), md5(shared), "the reflink copy differs");
    fs::remove_file(&copy).expect("remove the reflink copy");
    {
        let _swap = SwapGuard::activate(swapfile);
        assert!(fs::read_to_string("/proc/swaps")
            .expect("/proc/swaps")
            .contains(&*swapfile.to_string_lossy()));
        assert_refused(swapfile, "swapfile", &[], false);
    }

    // Too little free space above the reserve: free space left is the file
    // plus half the 5% reserve (enough for a donor, not once the reserve
    // is kept).
    let size = fs::metadata(big).expect("stat").len();
    let reserve = fs_bytes(&root) * 5 / 100;
    let ballast = root.join("ballast");
    let len = free_bytes(&root) - (size + reserve / 2);
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
        "big.bin {} MiB, free {:.1} MiB, reserve {:.1} MiB",
        size / MIB,
        free_bytes(&root) as f64 / MIB as f64,
        reserve as f64 / MIB as f64
    );
    assert!(free_bytes(&root) > size && free_bytes(&root) < size + reserve);
    assert_refused(big, "not_enough_free_space", &[], true);
    fs::remove_file(&ballast).expect("remove the ballast");
    sync_fs(&root);

    // A read-only mount: every file is refused, this good one too.
    img.remount("ro");
    assert_refused(big, "read_only", &[], true);
    img.remount("rw");
    img.unmount_and_fsck();
}

/// On XFS without the reverse-mapping btree, SWAPEXT's crash recovery
/// is broken on this kernel (tests/xfs/crash.rs): the file is left unless
/// the operator accepts that, and then it is moved.
#[test]
fn without_rmapbt_the_swap_waits_for_the_operators_consent() {
    if !require_root() {
        return;
    }
    let spec = ImageSpec::xfs(512).mkfs_opts(&["-m", "rmapbt=0"]);
    let (mut img, paths) = super::with_fragmented(spec, &[("data/old-xfs.bin", 24 * MIB, 7)]);
    let path = &paths[0];
    assert_refused(path, "swapext_not_crash_safe", &[], true);
    let sum = md5(path);
    let before = xfs_bmap_extents(path);
    let (report, _) = defrag_json(&["--xfs-swapext-without-rmapbt"], &[path.as_path()], 0);
    let f = report.file(path);
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    let after = xfs_bmap_extents(path);
    eprintln!("with consent: {before} -> {after} extents");
    assert!(after < before, "{before} -> {after}");
    assert_eq!(md5(path), sum, "content changed");
    img.unmount_and_fsck();
}

#[test]
fn a_donor_no_better_than_the_file_is_refused() {
    if !require_root() {
        return;
    }
    require_tools(XFS_TOOLS);
    let mut img = LoopImage::create(ImageSpec::xfs(384));
    let root = img.root().to_path_buf();
    let path = root.join("stuck.bin");
    // The file goes into 64 KiB holes; then what is still free is cut into
    // 32 KiB holes and every filler file stays: any donor is in about
    // twice the file's pieces. (The fragmenter shrank XFS's reserve pool
    // to 1 MiB, so no large free extent is kept back; no remount, which
    // would take the whole reserve back out of the little space left.)
    let coarse = make_fragmented_files(&root, &[(&path, 24 * MIB, 99)], 0);
    let fine = fragment_free_space_with(&root, "filler-32k", 32 * KIB, 0);
    eprintln!(
        "file: {} extents (xfs_bmap); {} + {} filler files kept, free {} MiB",
        xfs_bmap_extents(&path),
        coarse.count(),
        fine.count(),
        free_bytes(&root) / MIB
    );
    assert_refused(&path, "no_contiguous_free_space", &[], true);
    img.unmount_and_fsck();
}
