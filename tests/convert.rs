//! Converting block-mapped (ext3-era) files to extents with
//! EXT4_IOC_MIGRATE, then defragmenting them, in one job: opt-in with
//! `defragd defrag --convert-block-mapped` or `[policy] convert_block_mapped`.
//!
//! Every image here starts as `mkfs.ext3` (so every file written on it is
//! block-mapped), mounted as ext4; most then get the extent feature with
//! `tune2fs -O extents,uninit_bg,dir_index`, as an operator upgrading from
//! ext3 does. Covered:
//!
//! 1. `check --json` counts the block-mapped files, per file and per
//!    filesystem; `defrag` without the flag skips them ("block_mapped",
//!    naming the setting); with it they end extent-mapped and defragmented,
//!    same data, mtime and inode, and e2fsck is clean.
//! 2. The service does the same in the background with
//!    `convert_block_mapped = true`, and leaves them alone by default.
//! 3. A file open for writing by another process is not converted ("busy").
//! 4. Without the extent feature: "no_extent_feature".
//! 5. Crash: the filesystem shut down without a log flush (a power cut)
//!    while the service converts many files: the data survives, e2fsck sees
//!    at most a leaked inode that `e2fsck -fy` repairs, and the restarted
//!    service names the file and the `e2fsck -f DEVICE` to run whenever the
//!    crash caught a conversion. DEFRAGD_CONVERT_CRASH_TRIALS sets the
//!    number of trials (default 10), DEFRAGD_CONVERT_CRASH_SEED the random
//!    seed (default: the clock; printed).
//!
//! Test 5 fails on the product as of this writing: the service records a
//! conversion as finished as soon as EXT4_IOC_MIGRATE returns, before the
//! journal has committed the kernel's work; a crash before that commit
//! leaves the leaked inode and no word about it (see the assertion).

use defragd_testkit as common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Images with block-mapped files.

/// One file to write: its path under the mount point, size and data seed.
struct Spec {
    rel: PathBuf,
    size: u64,
    seed: u64,
}

fn spec(rel: &str, size: u64, seed: u64) -> Spec {
    Spec {
        rel: PathBuf::from(rel),
        size,
        seed,
    }
}

/// Writes `files` in `piece`-byte appends, taking turns between the files,
/// each append followed by fsync: in fragmented free space each file lands
/// in many pieces.
fn write_interleaved(paths: &[PathBuf], files: &[Spec], piece: u64) {
    let mut open: Vec<(File, Seeded, u64)> = paths
        .iter()
        .zip(files)
        .map(|(p, s)| {
            let f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
            (f, Seeded::new(s.seed), s.size)
        })
        .collect();
    let mut buf = vec![0u8; piece as usize];
    while open.iter().any(|(_, _, left)| *left > 0) {
        for (f, rng, left) in open.iter_mut().filter(|(_, _, left)| *left > 0) {
            let n = (*left).min(piece) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).expect("append");
            f.sync_all().expect("fsync");
            *left -= n as u64;
        }
    }
}

/// `lsattr PATH`'s flag field, e.g. "--------------e-------".
fn lsattr_flags(path: &Path) -> String {
    let out = sh("lsattr", [path]);
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("cannot parse lsattr output {out:?}"))
        .to_string()
}

/// Whether lsattr shows the file extent-mapped (flag `e`).
fn extent_mapped(path: &Path) -> bool {
    lsattr_flags(path).contains('e')
}

/// Unmounts `img`, gives it the extent feature with tune2fs (running
/// `e2fsck -fy` if tune2fs asks for it), and mounts it again.
fn enable_extents(img: &mut LoopImage) {
    img.unmount();
    let (ok, out, err) = sh_status(
        "tune2fs",
        [
            OsStr::new("-O"),
            OsStr::new("extents,uninit_bg,dir_index"),
            img.image_path().as_os_str(),
        ],
    );
    let text = format!("{out}{err}");
    assert!(ok, "tune2fs -O extents,uninit_bg,dir_index failed:\n{text}");
    if text.contains("fsck") {
        eprintln!("tune2fs asks for e2fsck:\n{}", text.trim());
        let (code, out) = e2fsck("-fy", img.image_path());
        assert!(
            code == 0 || code == 1,
            "e2fsck -fy after tune2fs exited {code}:\n{out}"
        );
        eprintln!("e2fsck -fy after tune2fs: exit {code}");
    } else {
        eprintln!(
            "tune2fs -O extents,uninit_bg,dir_index: {}",
            text.trim().replace('\n', " | ")
        );
    }
    img.mount();
}

/// `e2fsck OPT IMAGE`: exit code and stdout+stderr.
fn e2fsck(opt: &str, image: &Path) -> (i32, String) {
    let out = run_raw(Command::new("e2fsck").arg(opt).arg(image));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An ext3 image (`mkfs.ext3`) mounted as ext4 with `files` written into
/// it in `piece`-byte fsync'd appends, taking turns. With `fragment`, free
/// space is fragmented first (64 KiB filler files, every other one deleted)
/// and the rest of the filler deleted afterwards, so the files are in many
/// pieces and contiguous free space exists. With `extents`, tune2fs then
/// gives the filesystem the extent feature (the files stay block-mapped).
/// Returns the image and the files' absolute paths.
fn block_mapped_image(
    size_mib: u64,
    files: &[Spec],
    piece: u64,
    fragment: bool,
    extents: bool,
) -> (LoopImage, Vec<PathBuf>) {
    let t = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(size_mib).kind(FsKind::Ext3AsExt4));
    let root = img.root().to_path_buf();
    let paths: Vec<PathBuf> = files.iter().map(|s| root.join(&s.rel)).collect();
    let filler = fragment.then(|| fragment_free_space(&root, 2 * MIB));
    for p in &paths {
        fs::create_dir_all(p.parent().expect("parent")).expect("create dir");
    }
    write_interleaved(&paths, files, piece);
    if let Some(filler) = filler {
        filler.delete_all(&root);
    }
    if extents {
        enable_extents(&mut img);
    } else {
        img.settle();
    }
    for p in &paths {
        assert!(
            !extent_mapped(p),
            "fixture: {} is extent-mapped on an ext3 filesystem",
            p.display()
        );
    }
    eprintln!(
        "image: {size_mib} MiB ext3{}, {} files written in {} KiB fsync'd appends{}: built in {:.1} s; free {} of {} MiB",
        if extents { " + tune2fs extents" } else { "" },
        files.len(),
        piece / KIB,
        if fragment { " into fragmented free space" } else { "" },
        t.elapsed().as_secs_f64(),
        free_bytes(&root) / MIB,
        fs_bytes(&root) / MIB,
    );
    (img, paths)
}

/// e2fsck's summary line ("IMAGE: 12/65536 files (0.0% non-contiguous), ...").
fn fsck_summary(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains(" files ("))
        .map_or("", str::trim)
}

/// md5, inode, mtime, ctime of a file.
fn identity(path: &Path) -> (String, u64, String, String) {
    let (ino, mtime, ctime) = stat_ids(path);
    (md5(path), ino, mtime, ctime)
}

/// Waits until every file's mtime is at least `age` in the past.
fn wait_until_older_than(paths: &[PathBuf], age: Duration) {
    let newest = paths
        .iter()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"))
        .max()
        .expect("some file");
    let since = newest.elapsed().unwrap_or_default();
    if let Some(left) = age.checked_sub(since) {
        sleep(left);
    }
}

// ---------------------------------------------------------------------------
// defragd's JSON, the parts this file needs beyond tests/common.

#[derive(Debug, Deserialize)]
struct CheckFs {
    mount_point: PathBuf,
    files: u64,
    block_mapped: u64,
}

#[derive(Debug, Deserialize)]
struct CheckEntry {
    path: PathBuf,
    extents: u64,
    ideal_extents: u64,
    block_mapped: bool,
}

#[derive(Debug, Deserialize)]
struct CheckTotals {
    files: u64,
    block_mapped: u64,
}

#[derive(Debug, Deserialize)]
struct Check {
    files: Vec<CheckEntry>,
    filesystems: Vec<CheckFs>,
    total: CheckTotals,
}

#[derive(Debug, Deserialize)]
struct Summary {
    defragmented: u64,
    converted: u64,
    failed: u64,
    skipped_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct SummaryOnly {
    summary: Summary,
}

/// `defragd defrag --json EXTRA... PATHS...`, exit 0: the report and its
/// summary.
fn defrag(extra: &[&str], paths: &[&Path]) -> (DefragReport, Summary) {
    let (report, run) = defrag_json(extra, paths, 0);
    let summary = run.json::<SummaryOnly>().summary;
    (report, summary)
}

// ---------------------------------------------------------------------------
// 1. One-shot: check, skip without the flag, convert and defragment with it.

#[test]
fn one_shot_converts_and_defragments_block_mapped_files_only_when_asked() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let specs = [
        spec("data/old0.bin", 8 * MIB, 0xb10c_0000),
        spec("data/old1.bin", 16 * MIB, 0xb10c_0001),
        spec("data/old2.bin", 24 * MIB, 0xb10c_0002),
    ];
    let (mut img, paths) = block_mapped_image(256, &specs, 64 * KIB, true, true);
    let root = img.root().to_path_buf();
    let data = root.join("data");
    let before: Vec<_> = paths.iter().map(|p| identity(p)).collect();
    let extents_before: Vec<u64> = paths.iter().map(|p| filefrag_extents(p)).collect();
    eprintln!("filefrag extents before: {extents_before:?}");

    // check: per file and per filesystem.
    let check = check_tree(&data);
    for p in &paths {
        let entry = check
            .files
            .iter()
            .find(|f| f.path == *p)
            .unwrap_or_else(|| panic!("check --json lists no {}: {:?}", p.display(), check.files));
        eprintln!(
            "check: {} extents {} ideal {} block_mapped {}",
            p.display(),
            entry.extents,
            entry.ideal_extents,
            entry.block_mapped
        );
        assert!(
            entry.block_mapped,
            "check does not report {} as block_mapped",
            p.display()
        );
        assert!(
            entry.extents > 10,
            "fixture: {} is not fragmented: {} extents",
            p.display(),
            entry.extents
        );
    }
    assert_eq!(check.total.files, paths.len() as u64, "total.files");
    assert_eq!(
        check.total.block_mapped,
        paths.len() as u64,
        "total.block_mapped"
    );
    assert_eq!(
        check.filesystems.len(),
        1,
        "one filesystem expected in check's \"filesystems\": {:?}",
        check.filesystems
    );
    let fsr = &check.filesystems[0];
    eprintln!(
        "check filesystems: {} files {} block_mapped {}",
        fsr.mount_point.display(),
        fsr.files,
        fsr.block_mapped
    );
    assert_eq!(fsr.mount_point, root, "filesystems[0].mount_point");
    assert_eq!(fsr.files, paths.len() as u64, "filesystems[0].files");
    assert_eq!(
        fsr.block_mapped,
        paths.len() as u64,
        "filesystems[0].block_mapped"
    );

    // defrag without the flag: skipped, naming the setting.
    let (report, summary) = defrag(&[], &[&data]);
    for p in &paths {
        let f = report.file(p);
        let reason = f.reason.as_deref().unwrap_or("");
        eprintln!(
            "defrag (no flag): {} {} {:?}: {reason}",
            p.display(),
            f.outcome,
            f.reason_code
        );
        assert_eq!(f.outcome, "skipped", "{}: {f:?}", p.display());
        assert_eq!(
            f.reason_code.as_deref(),
            Some("block_mapped"),
            "{}: {f:?}",
            p.display()
        );
        assert!(
            reason.contains("policy.convert_block_mapped")
                && reason.contains("--convert-block-mapped"),
            "the reason should name policy.convert_block_mapped and --convert-block-mapped: {reason:?}"
        );
        assert!(
            !extent_mapped(p),
            "{} was converted without the flag",
            p.display()
        );
    }
    assert_eq!(
        summary.skipped_by_reason.get("block_mapped"),
        Some(&(paths.len() as u64)),
        "{summary:?}"
    );
    assert_eq!(
        (summary.defragmented, summary.converted),
        (0, 0),
        "{summary:?}"
    );
    for (p, b) in paths.iter().zip(&before) {
        assert_eq!(
            &identity(p),
            b,
            "{} changed although it was skipped",
            p.display()
        );
    }

    // defrag with the flag: converted and defragmented.
    let t = Instant::now();
    let (report, summary) = defrag(&["--convert-block-mapped"], &[&data]);
    eprintln!(
        "defrag --convert-block-mapped in {:.1} s: {summary:?}",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "{:<12} {:>4} {:>14} {:>6} {:>6} {:>6} {:>10}  lsattr",
        "file", "MiB", "outcome", "before", "after", "ideal", "filefrag"
    );
    for ((p, b), ff_before) in paths.iter().zip(&before).zip(&extents_before) {
        let f = report.file(p);
        let ff_after = filefrag_extents(p);
        let ideal = f.ideal_extents.expect("ideal_extents");
        let flags = lsattr_flags(p);
        eprintln!(
            "{:<12} {:>4} {:>14} {:>6} {:>6} {:>6} {:>10}  {flags}",
            p.file_name().unwrap_or_default().to_string_lossy(),
            f.size_bytes / MIB,
            if f.outcome == "converted_and_defragmented" {
                "conv+defrag"
            } else {
                f.outcome.as_str()
            },
            f.extents_before.unwrap_or(0),
            f.extents_after.map_or("-".into(), |n| n.to_string()),
            ideal,
            format!("{ff_before}->{ff_after}"),
        );
        assert_eq!(
            f.outcome,
            "converted_and_defragmented",
            "{}: {f:?}",
            p.display()
        );
        assert!(
            flags.contains('e'),
            "{} is not extent-mapped after conversion: lsattr {flags}",
            p.display()
        );
        let limit = (2 * ideal).max(4);
        let after = f.extents_after.expect("extents_after");
        assert!(
            after <= limit && ff_after <= limit,
            "{}: {after} extents after (filefrag {ff_after}), more than max(2 x ideal {ideal}, 4) = {limit}",
            p.display()
        );
        let now = identity(p);
        assert_eq!(now.0, b.0, "{}: md5 changed", p.display());
        assert_eq!(now.1, b.1, "{}: inode number changed", p.display());
        assert_eq!(now.2, b.2, "{}: mtime changed", p.display());
        if now.3 != b.3 {
            eprintln!("note: {} ctime changed {} -> {}", p.display(), b.3, now.3);
        }
    }
    assert_eq!(summary.converted, paths.len() as u64, "{summary:?}");
    assert_eq!(summary.defragmented, paths.len() as u64, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");

    // check again: nothing block-mapped is left.
    let check = check_tree(&data);
    assert_eq!(
        (check.total.block_mapped, check.filesystems[0].block_mapped),
        (0, 0),
        "block-mapped files left after the conversion"
    );

    let fsck = img.unmount_and_fsck();
    eprintln!("e2fsck -fn: clean; {}", fsck_summary(&fsck));
    eprintln!("test 1 took {:.1} s", t0.elapsed().as_secs_f64());
}

/// `defragd check --json -r DIR`, exit 0.
fn check_tree(dir: &Path) -> Check {
    let run = defragd([
        OsStr::new("check"),
        OsStr::new("--json"),
        OsStr::new("-r"),
        dir.as_os_str(),
    ]);
    run.assert_code(0);
    run.json()
}

// ---------------------------------------------------------------------------
// 2. The service, with the policy off (default) and on.

/// The config text of `cfg` for `home`, with `[policy] convert_block_mapped`
/// set to `on`.
fn config_with_conversion(home: &ServiceHome, cfg: &ServiceConfig, on: bool) -> String {
    let text = cfg.to_toml(&home.state_dir(), &home.control_socket());
    let with = text.replacen(
        "[policy]\n",
        &format!("[policy]\nconvert_block_mapped = {on}\n"),
        1,
    );
    assert_ne!(with, text, "no [policy] table in the config text:\n{text}");
    with
}

/// "... pass done, N files assessed, M queued in ..." → (N, M).
fn pass_counts(line: &str) -> (u64, u64) {
    let number_before = |marker: &str| -> u64 {
        let at = line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} not in {line:?}"));
        let digits: String = line[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number before {marker:?} in {line:?}"))
    };
    (number_before(" files assessed"), number_before(" queued"))
}

#[test]
fn the_service_converts_block_mapped_files_only_when_the_policy_allows_it() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let specs = [
        spec("srv/db.bin", 12 * MIB, 0x5e2_0001),
        spec("srv/log.bin", 8 * MIB, 0x5e2_0002),
    ];
    let (mut img, paths) = block_mapped_image(256, &specs, 64 * KIB, true, true);
    let root = img.root().to_path_buf();
    let before: Vec<_> = paths.iter().map(|p| identity(p)).collect();
    let extents_before: Vec<u64> = paths.iter().map(|p| filefrag_extents(p)).collect();
    let cfg = ServiceConfig::new(&root, &[]);
    // Older than the quiet period (2 s), with a margin.
    wait_until_older_than(&paths, secs(3));

    // Off (the default: the key is not written at all).
    {
        let home = ServiceHome::new();
        home.write_config(&cfg);
        let config = fs::read_to_string(home.config_path()).expect("read config");
        assert!(!config.contains("convert_block_mapped"));
        let mut svc = home.start(&[]);
        let line = svc.wait_for_log("pass done", secs(30));
        let (assessed, queued) = pass_counts(&line);
        // A moment for a worker that would have picked something up.
        sleep(Duration::from_millis(1500));
        let converting = svc.lines_with("converting");
        svc.stop(secs(10));
        eprintln!("policy off: crawl assessed {assessed}, queued {queued}; conversion lines: {converting:?}");
        assert!(assessed >= paths.len() as u64, "{line}");
        assert_eq!(
            queued, 0,
            "block-mapped files were queued with the policy off: {line}"
        );
        assert!(
            converting.is_empty(),
            "the service converted with the policy off: {converting:?}"
        );
        for (p, b) in paths.iter().zip(&before) {
            assert!(
                !extent_mapped(p),
                "{} was converted with the policy off",
                p.display()
            );
            assert_eq!(
                &identity(p),
                b,
                "{} changed with the policy off",
                p.display()
            );
        }
    }

    // On.
    let home = ServiceHome::new();
    home.write_config_text(&config_with_conversion(&home, &cfg, true));
    let mut svc = home.start(&[]);
    let t = Instant::now();
    let mut done = Vec::new();
    for p in &paths {
        let line = svc.wait_for_log(
            &format!("converted and defragmented {}:", p.display()),
            secs(60),
        );
        done.push(line);
    }
    let took = t.elapsed();
    let warns = svc.lines_with("to extents (EXT4_IOC_MIGRATE is not crash-safe");
    svc.stop(secs(10));
    eprintln!(
        "policy on: all converted and defragmented within {:.1} s of the start",
        took.as_secs_f64()
    );
    for l in warns.iter().chain(&done) {
        eprintln!("  log: {l}");
    }
    for p in &paths {
        assert!(
            warns.iter().any(|l| l.contains("WARN")
                && l.contains(&format!("converting {} to extents", p.display()))),
            "no WARN \"converting {} to extents\" line: {warns:?}",
            p.display()
        );
    }
    for ((p, b), ff_before) in paths.iter().zip(&before).zip(&extents_before) {
        let flags = lsattr_flags(p);
        let ff_after = filefrag_extents(p);
        eprintln!(
            "{}: lsattr {flags}, filefrag {ff_before} -> {ff_after}",
            p.display()
        );
        assert!(
            flags.contains('e'),
            "{} is not extent-mapped: {flags}",
            p.display()
        );
        assert!(
            ff_after < *ff_before,
            "{}: not defragmented ({ff_before} -> {ff_after})",
            p.display()
        );
        let now = identity(p);
        assert_eq!(now.0, b.0, "{}: md5 changed", p.display());
        assert_eq!(now.1, b.1, "{}: inode number changed", p.display());
        assert_eq!(now.2, b.2, "{}: mtime changed", p.display());
    }
    let fsck = img.unmount_and_fsck();
    eprintln!("e2fsck -fn: clean; {}", fsck_summary(&fsck));
    eprintln!("test 2 took {:.1} s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// 3. A file open for writing is not converted.

#[test]
fn a_file_open_for_writing_is_not_converted() {
    if !require_root() {
        return;
    }
    let specs = [spec("busy/open.bin", 4 * MIB, 0xb05_0001)];
    let (mut img, paths) = block_mapped_image(128, &specs, 64 * KIB, true, true);
    let p = &paths[0];
    let before = identity(p);
    {
        // Another process (this test) holds it open for writing.
        let _writer = OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open for writing");
        let t = Instant::now();
        let (report, summary) = defrag(&["--convert-block-mapped"], &[p]);
        let f = report.file(p);
        let reason = f.reason.as_deref().unwrap_or("");
        eprintln!(
            "with a writer: {} {:?} in {:.2} s: {reason}",
            f.outcome,
            f.reason_code,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(f.outcome, "skipped", "{f:?}");
        assert_eq!(f.reason_code.as_deref(), Some("busy"), "{f:?}");
        assert!(
            reason.contains("open for writing"),
            "the reason should say the file is open for writing: {reason:?}"
        );
        assert_eq!(summary.converted, 0, "{summary:?}");
        assert!(t.elapsed() < secs(20), "the run waited for the writer");
        let flags = lsattr_flags(p);
        assert!(
            !flags.contains('e'),
            "{} was converted while open for writing: {flags}",
            p.display()
        );
        assert_eq!(identity(p), before, "the file changed");
    }
    // The writer gone, the same command converts it.
    let (report, _) = defrag(&["--convert-block-mapped"], &[p]);
    let f = report.file(p);
    eprintln!(
        "writer closed: {} {:?} {:?}",
        f.outcome, f.reason_code, f.reason
    );
    assert!(
        f.outcome == "converted_and_defragmented" || f.outcome == "converted",
        "{f:?}"
    );
    assert!(extent_mapped(p), "not converted once the writer closed it");
    assert_eq!(identity(p).0, before.0, "md5 changed");
    let fsck = img.unmount_and_fsck();
    eprintln!("e2fsck -fn: clean; {}", fsck_summary(&fsck));
}

// ---------------------------------------------------------------------------
// 4. No extent feature: nothing to convert to.

#[test]
fn without_the_extent_feature_nothing_is_converted() {
    if !require_root() {
        return;
    }
    let specs = [spec("old/ext3.bin", 4 * MIB, 0xe3_0001)];
    let (mut img, paths) = block_mapped_image(128, &specs, 64 * KIB, true, false);
    let p = &paths[0];
    let before = identity(p);
    let (report, summary) = defrag(&["--convert-block-mapped"], &[p]);
    let f = report.file(p);
    let reason = f.reason.as_deref().unwrap_or("");
    eprintln!(
        "no extent feature: {} {:?}: {reason}",
        f.outcome, f.reason_code
    );
    assert_eq!(f.outcome, "skipped", "{f:?}");
    assert_eq!(f.reason_code.as_deref(), Some("no_extent_feature"), "{f:?}");
    assert!(reason.contains("tune2fs -O extents"), "{reason:?}");
    assert_eq!((summary.converted, summary.failed), (0, 0), "{summary:?}");
    assert!(
        !extent_mapped(p),
        "converted on a filesystem without extents"
    );
    assert_eq!(identity(p), before, "the file changed");
    let fsck = img.unmount_and_fsck();
    eprintln!("e2fsck -fn: clean; {}", fsck_summary(&fsck));
}

// ---------------------------------------------------------------------------
// 5. A power cut during a conversion.
//
// EXT4_IOC_MIGRATE builds the new extent tree in a temporary inode (in
// use, no links, on no orphan list), swaps it into the file and frees it,
// in several journal handles. If the journal commits between the first and
// the last of them and the power goes before the next commit, the
// temporary inode is left behind for e2fsck ("Deleted inode N has zero
// dtime"). The whole call takes ~10 ms, nearly all of it waiting for an
// RCU grace period before anything changes, and then well under a
// millisecond of work: a moment picked at random almost never falls where
// it matters. So each trial picks a random moment soon after the first
// conversion, waits there for the worker to be inside EXT4_IOC_MIGRATE and
// to leave that wait, waits a random few more microseconds, has another
// process on the filesystem fsync a file of its own (a journal commit, as
// on any busy machine), and cuts the power right after that commit.
// Trials alternate two cuts: a power cut (the service is stopped with
// SIGSTOP at the instant the filesystem is shut down without a log flush,
// then killed) and a filesystem shutdown under the running service (then
// killed 300 ms later). About one trial in four or five catches a
// conversion before it is durable; ten trials catch at least one about
// nine runs in ten.

/// EXT4_IOC_SHUTDOWN, _IOR('X', 125, __u32).
const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587D;
/// Shut down without flushing the log: like a power cut.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
/// EXT4_IOC_MIGRATE, _IO('f', 9).
const EXT4_IOC_MIGRATE: u64 = 0x6609;
/// The most microseconds between the worker leaving EXT4_IOC_MIGRATE's
/// RCU wait and the other process's fsync.
const JITTER_US: u64 = 400;

/// Shuts down the filesystem holding `dir` (an open fd on it).
fn shutdown_fs(dir: &File, flag: u32) {
    let arg: u32 = flag;
    // SAFETY: EXT4_IOC_SHUTDOWN reads one u32 through the pointer, which
    // points at a live local; the fd is open for the call.
    let rc =
        unsafe { nix::libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &arg as *const u32) };
    assert_eq!(
        rc,
        0,
        "EXT4_IOC_SHUTDOWN: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `sig` to `pid` (a child this test started and has not reaped).
fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits in i32");
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { nix::libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Whether a /proc/PID/task/TID/syscall line is ioctl(_, EXT4_IOC_MIGRATE).
fn is_migrate_syscall(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let nr = fields.first().and_then(|f| f.parse::<i64>().ok());
    let cmd = fields
        .get(2)
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    nr == Some(nix::libc::SYS_ioctl) && cmd == Some(EXT4_IOC_MIGRATE)
}

/// The threads of `pid` blocked in ioctl(fd, EXT4_IOC_MIGRATE), or, when
/// stopped, stopped on their way out of it (no code of their own run
/// since): (tid, name).
fn threads_in_migrate(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(syscall) = fs::read_to_string(dir.join("syscall")) else {
            continue;
        };
        if is_migrate_syscall(&syscall) {
            let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
            found.push((
                task.file_name().to_string_lossy().into_owned(),
                name.trim().to_string(),
            ));
        }
    }
    found
}

/// Whether every thread of `pid` is stopped (state T or t).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'T' || state == 't')
            })
            .unwrap_or(true)
    })
}

/// e2fsck's offers to optimize a valid extent tree ("Inode N extent tree
/// (at level 1) could be narrower.  Optimize? no"): not a problem, exit 0.
fn is_fsck_optimization(line: &str) -> bool {
    line.contains("extent tree")
        && (line.contains("could be narrower") || line.contains("could be shorter"))
}

/// e2fsck's lines that report a problem (not the banner, the pass
/// headers, the summary, the closing warning or an optimization).
fn fsck_problem_lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("e2fsck 1.")
                && !l.starts_with("Pass ")
                && !l.contains(" files (")
                && !l.contains("WARNING: Filesystem still has errors")
                && !is_fsck_optimization(l)
        })
        .map(str::to_string)
        .collect()
}

/// Whether `line` is one of the lines `e2fsck -fn` prints about an inode
/// a conversion leaked: EXT4_IOC_MIGRATE's temporary inode, in use with no
/// links and no dtime, with the extent-tree blocks it may hold, and the
/// counts that follow (as seen on e2fsprogs 1.47.0, kernel 6.18).
fn leaked_inode_line(line: &str) -> bool {
    let l = line.trim();
    (l.starts_with("Deleted inode ") && l.contains(" has zero dtime."))
        || l.starts_with("Inode bitmap differences:")
        || l.starts_with("Block bitmap differences:")
        || l.starts_with("Free inodes count wrong")
        || l.starts_with("Free blocks count wrong")
        || l == "Fix? no"
}

/// How a trial brings the filesystem down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// A power cut: the service stops (SIGSTOP) at the same instant as the
    /// filesystem (shut down without a log flush); then it is killed.
    Power,
    /// The filesystem is shut down (no log flush) under the running
    /// service, which sees its calls fail for a moment; then it is killed.
    FsShutdown,
}

/// What one crash trial saw.
#[derive(Debug)]
struct Trial {
    cut: Cut,
    /// The filesystem's device during the trial.
    dev: String,
    delay_ms: u64,
    jitter_us: u64,
    /// The worker was seen inside EXT4_IOC_MIGRATE before the cut.
    seen: bool,
    /// Power cut only: the worker stopped on its way out of
    /// EXT4_IOC_MIGRATE (it could not record the end of the conversion).
    in_ioctl: bool,
    /// Every file a "converting PATH to extents" line named, in order.
    converting: Vec<String>,
    converted_files: usize,
    fsck_code: i32,
    fsck_lines: Vec<String>,
    repaired: Option<i32>,
    error_lines: Vec<String>,
}

impl Trial {
    /// The cut caught a conversion before it was durable: inside the
    /// kernel call, or after it but before the journal committed its end
    /// (e2fsck finds the inode it leaked).
    fn caught(&self) -> bool {
        self.in_ioctl || self.fsck_code != 0
    }
}

/// The path in a "converting PATH to extents" line.
fn converting_path(line: &str) -> Option<String> {
    let rest = &line[line.find("converting ")? + "converting ".len()..];
    Some(rest[..rest.find(" to extents")?].to_string())
}

fn crash_trial(
    n: usize,
    cut: Cut,
    template: &mut LoopImage,
    rels: &[PathBuf],
    md5s: &[String],
    rng: &mut Seeded,
) -> Trial {
    let mut img = template.duplicate();
    let root = img.root().to_path_buf();
    let dev = img.device().expect("attached").to_string();
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.quiet_period = "1s".into();
    cfg.min_size = "64KiB".into();
    cfg.min_excess_extents = 1;
    cfg.min_score = 0;
    home.write_config_text(&config_with_conversion(&home, &cfg, true));
    // Another process's file on the same filesystem.
    let other = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("other-process.dat"))
        .expect("create the other process's file");

    let mut svc = home.start(&[]);
    let pid = svc.pid();
    let fs_fd = File::open(&root).expect("open the mount point");
    svc.wait_for_line("the first conversion", secs(30), |l| {
        l.contains("WARN") && converting_path(l).is_some()
    });
    let delay_ms = rng.range(0, 150);
    let jitter_us = rng.range(0, JITTER_US);
    sleep(Duration::from_millis(delay_ms));
    let watch = Instant::now();
    let mut seen = false;
    while watch.elapsed() < secs(3) {
        if let Some((tid, _)) = threads_in_migrate(pid).into_iter().next() {
            seen = true;
            // Until it leaves the RCU wait (its syscall line then reads
            // "running", or another call).
            let syscall = format!("/proc/{pid}/task/{tid}/syscall");
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_millis(200)
                && is_migrate_syscall(&fs::read_to_string(&syscall).unwrap_or_default())
            {
            }
            break;
        }
    }
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_micros(jitter_us) {
        std::hint::spin_loop();
    }
    other
        .set_modified(std::time::SystemTime::now())
        .expect("touch the other file");
    other.sync_all().expect("fsync the other file");
    let mut in_ioctl = false;
    match cut {
        Cut::Power => {
            // A thread inside the ioctl finishes it in the kernel but runs
            // no more of its own code: it cannot record the end.
            signal(pid, nix::libc::SIGSTOP);
            shutdown_fs(&fs_fd, EXT4_GOING_FLAGS_NOLOGFLUSH);
            let at = Instant::now();
            while !all_stopped(pid) && at.elapsed() < secs(5) {
                sleep(Duration::from_millis(1));
            }
            in_ioctl = !threads_in_migrate(pid).is_empty();
        }
        Cut::FsShutdown => {
            shutdown_fs(&fs_fd, EXT4_GOING_FLAGS_NOLOGFLUSH);
            sleep(Duration::from_millis(300));
        }
    }
    svc.sigkill();
    drop(fs_fd);
    drop(other);

    let converting: Vec<String> = svc
        .log()
        .lines()
        .filter(|l| l.contains("WARN"))
        .filter_map(converting_path)
        .collect();
    eprintln!(
        "trial {n} ({cut:?}): cut {delay_ms} ms after the first conversion + the next one's RCU wait ({}) + {jitter_us} us + an fsync; worker stopped in EXT4_IOC_MIGRATE: {in_ioctl}; {} conversions started, the last {:?}",
        if seen { "seen" } else { "not seen" },
        converting.len(),
        converting.last()
    );
    eprintln!("trial {n}: service log tail:\n{}", svc.tail(3));

    // Unmount, mount again (the journal replays): the data is intact.
    img.unmount();
    img.mount();
    let check_data = |when: &str| {
        for (rel, want) in rels.iter().zip(md5s) {
            let got = md5(&root.join(rel));
            assert_eq!(&got, want, "trial {n}: {} changed {when}", rel.display());
        }
    };
    check_data("after the crash and the journal replay");
    let converted_files = rels
        .iter()
        .filter(|rel| extent_mapped(&root.join(rel)))
        .count();
    img.unmount();

    let image = img.image_path().to_path_buf();
    let (fsck_code, out) = e2fsck("-fn", &image);
    let fsck_lines = fsck_problem_lines(&out);
    eprintln!(
        "trial {n}: md5 of all {} files intact; {converted_files} extent-mapped; e2fsck -fn exit {fsck_code}{}",
        rels.len(),
        if fsck_code == 0 {
            String::new()
        } else {
            format!(":\n{}", out.trim_end())
        }
    );
    let other_lines: Vec<&String> = fsck_lines
        .iter()
        .filter(|l| !leaked_inode_line(l))
        .collect();
    assert!(
        (fsck_code == 0 || fsck_code == 4) && other_lines.is_empty(),
        "trial {n}: e2fsck -fn (exit {fsck_code}) reports more than a leaked inode: {other_lines:?}\n{out}"
    );
    let mut repaired = None;
    if fsck_code != 0 {
        let (fix, fix_out) = e2fsck("-fy", &image);
        eprintln!("trial {n}: e2fsck -fy exit {fix}:\n{}", fix_out.trim_end());
        assert!(
            fix == 0 || fix == 1,
            "trial {n}: e2fsck -fy exit {fix}:\n{fix_out}"
        );
        repaired = Some(fix);
        let (again, again_out) = e2fsck("-fn", &image);
        assert_eq!(
            again, 0,
            "trial {n}: e2fsck -fn after e2fsck -fy is not clean:\n{again_out}"
        );
        eprintln!("trial {n}: e2fsck -fn after the repair: exit 0");
    }
    img.mount();
    check_data("after e2fsck");

    // The restarted service (same state_dir) speaks of the conversion.
    let mut svc = home.start(&[]);
    svc.wait_for_log("defragd is running", secs(20));
    let error_lines = svc.lines_with("defragd was converting");
    svc.stop(secs(10));
    img.unmount();
    for l in &error_lines {
        eprintln!("trial {n}: restarted service: {l}");
    }
    Trial {
        cut,
        dev,
        delay_ms,
        jitter_us,
        seen,
        in_ioctl,
        converting,
        converted_files,
        fsck_code,
        fsck_lines,
        repaired,
        error_lines,
    }
}

/// An ext3 image with `specs` written block by block into free space made
/// of one-block holes: a filler file fills the filesystem, every other
/// block of it is punched out, the files are written (fsync'd appends,
/// taking turns), then the filler is deleted. Each file ends in about one
/// piece per block: the most work for EXT4_IOC_MIGRATE.
fn crash_template(size_mib: u64, specs: &[Spec]) -> (LoopImage, Vec<PathBuf>) {
    use nix::fcntl::{fallocate, FallocateFlags};
    let t = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(size_mib).kind(FsKind::Ext3AsExt4));
    let root = img.root().to_path_buf();
    let filler = root.join("filler");
    {
        let mut f = File::create(&filler).expect("create filler");
        let chunk = vec![0x5au8; MIB as usize];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("write filler: {e}"),
            }
        }
        let _ = f.sync_all();
        let len = f.metadata().expect("filler metadata").len();
        let block = 4 * KIB;
        for off in (0..len).step_by(2 * block as usize) {
            fallocate(
                &f,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                block as i64,
            )
            .expect("punch a hole in the filler");
        }
        f.sync_all().expect("fsync filler");
    }
    let paths: Vec<PathBuf> = specs.iter().map(|s| root.join(&s.rel)).collect();
    for p in &paths {
        fs::create_dir_all(p.parent().expect("parent")).expect("create dir");
    }
    write_interleaved(&paths, specs, 64 * KIB);
    fs::remove_file(&filler).expect("delete filler");
    enable_extents(&mut img);
    eprintln!(
        "crash template: {size_mib} MiB ext3 + tune2fs extents, {} files written into one-block holes, in {:.1} s; free {} of {} MiB",
        specs.len(),
        t.elapsed().as_secs_f64(),
        free_bytes(&root) / MIB,
        fs_bytes(&root) / MIB
    );
    (img, paths)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_power_cut_during_a_conversion_loses_no_data_and_is_reported() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let trials = env_u64("DEFRAGD_CONVERT_CRASH_TRIALS").unwrap_or(10) as usize;
    let seed = env_u64("DEFRAGD_CONVERT_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "crash trials: {trials} (DEFRAGD_CONVERT_CRASH_TRIALS), seed {seed} (DEFRAGD_CONVERT_CRASH_SEED)"
    );
    let mut rng = Seeded::new(seed);
    let mut sizes = Seeded::new(0xc4a5_0000);
    let specs: Vec<Spec> = (0..32)
        .map(|i| {
            spec(
                &format!("old/f{i:02}.bin"),
                sizes.range(32, 64) * 64 * KIB,
                0xc4a5_1000 + i,
            )
        })
        .collect();
    let (mut template, paths) = crash_template(384, &specs);
    let rels: Vec<PathBuf> = specs.iter().map(|s| s.rel.clone()).collect();
    let md5s: Vec<String> = paths.iter().map(|p| md5(p)).collect();
    let extents: Vec<u64> = paths.iter().map(|p| filefrag_extents(p)).collect();
    eprintln!(
        "template: {} block-mapped files, {} MiB, {}..{} extents each",
        paths.len(),
        specs.iter().map(|s| s.size).sum::<u64>() / MIB,
        extents.iter().min().unwrap_or(&0),
        extents.iter().max().unwrap_or(&0)
    );
    wait_until_older_than(&paths, secs(2));

    let results: Vec<Trial> = (1..=trials)
        .map(|n| {
            let cut = if n % 2 == 1 {
                Cut::Power
            } else {
                Cut::FsShutdown
            };
            crash_trial(n, cut, &mut template, &rels, &md5s, &mut rng)
        })
        .collect();

    let count = |f: &dyn Fn(&Trial) -> bool| results.iter().filter(|t| f(t)).count();
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for t in &results {
        for l in &t.fsck_lines {
            *lines.entry(l.clone()).or_default() += 1;
        }
    }
    for (i, t) in results.iter().enumerate() {
        eprintln!(
            "  trial {} {:?}: {} ms + {} us, seen {}, in ioctl {}, {} conversions started (last {:?}), {} extent-mapped after replay, e2fsck -fn {} {:?}, -fy {:?}, restarted ERROR lines {}",
            i + 1,
            t.cut,
            t.delay_ms,
            t.jitter_us,
            t.seen,
            t.in_ioctl,
            t.converting.len(),
            t.converting
                .last()
                .map(|f| f.rsplit('/').next().unwrap_or(f)),
            t.converted_files,
            t.fsck_code,
            t.fsck_lines,
            t.repaired,
            t.error_lines.len()
        );
    }
    for (l, count) in &lines {
        eprintln!("  e2fsck -fn printed, in {count} trial(s): {l}");
    }
    let caught = count(&|t| t.caught());
    eprintln!(
        "SUMMARY: {trials} trials ({} power cut, {} fs shutdown under the running service); conversions caught mid-way {caught} (worker stopped inside EXT4_IOC_MIGRATE {}, leaked inode found by e2fsck {}); e2fsck -fn clean {}, leaked inode {} (e2fsck -fy repaired {} of them, e2fsck -fn clean after); data intact in all; restarted service logged an interrupted conversion in {} of the {caught} that needed it; {:.1} s",
        count(&|t| t.cut == Cut::Power),
        count(&|t| t.cut == Cut::FsShutdown),
        count(&|t| t.in_ioctl),
        count(&|t| t.fsck_code != 0),
        count(&|t| t.fsck_code == 0),
        count(&|t| t.fsck_code != 0),
        count(&|t| t.repaired.is_some()),
        count(&|t| t.caught() && !t.error_lines.is_empty()),
        t0.elapsed().as_secs_f64()
    );
    if caught == 0 {
        eprintln!("NOTE: no trial caught a conversion in the act");
    }

    // Every conversion a crash caught must be named by the restarted
    // service, with the e2fsck to run.
    let missing: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, t)| t.caught())
        .filter_map(|(i, t)| {
            let device = format!("e2fsck -f {}", t.dev);
            let named = |file: &str| {
                t.error_lines.iter().any(|l| {
                    l.contains("ERROR")
                        && l.contains(&format!("converting {file} "))
                        && l.contains(&device)
                })
            };
            // Stopped inside the call: that very file. Leaked inode found
            // later: one of the files this run converted.
            let ok = if t.in_ioctl {
                t.converting.last().is_some_and(|f| named(f))
            } else {
                t.converting.iter().any(|f| named(f))
            };
            (!ok).then(|| {
                format!(
                    "trial {} ({:?}): {} (last conversion {:?}), but the restarted service logged {:?}",
                    i + 1,
                    t.cut,
                    if t.in_ioctl {
                        "cut inside EXT4_IOC_MIGRATE".to_string()
                    } else {
                        format!("e2fsck -fn found the leaked inode: {:?}", t.fsck_lines)
                    },
                    t.converting.last(),
                    t.error_lines
                )
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "a crash caught a conversion and the restarted service did not name it with `e2fsck -f DEVICE`:\n{}\n\
         (the service marks a conversion finished as soon as EXT4_IOC_MIGRATE returns, before the journal \
         has committed the kernel's work: the end must be recorded only once it is durable, e.g. after a \
         syncfs(2) of the filesystem)",
        missing.join("\n")
    );
}
