//! Test 1, one-shot: `check --json` counts the block-mapped files;
//! `defragd defrag` without `--convert-block-mapped` skips them, with it
//! converts and defragments them (same data, mtime and inode; e2fsck clean).

use super::*;

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

    check_reports_every_block_mapped_file(&data, &root, &paths);
    defrag_without_the_flag_skips_them_naming_the_setting(&data, &paths, &before);
    defrag_with_the_flag_converts_and_defragments_them(&data, &paths, &before, &extents_before);

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

/// check: per file and per filesystem.
fn check_reports_every_block_mapped_file(data: &Path, root: &Path, paths: &[PathBuf]) {
    let check = check_tree(data);
    for p in paths {
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
}

/// defrag without the flag: skipped, naming the setting.
fn defrag_without_the_flag_skips_them_naming_the_setting(
    data: &Path,
    paths: &[PathBuf],
    before: &[(String, u64, String, String)],
) {
    let (report, summary) = defrag(&[], &[data]);
    for p in paths {
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
    for (p, b) in paths.iter().zip(before) {
        assert_eq!(
            &identity(p),
            b,
            "{} changed although it was skipped",
            p.display()
        );
    }
}

/// defrag with the flag: converted and defragmented.
fn defrag_with_the_flag_converts_and_defragments_them(
    data: &Path,
    paths: &[PathBuf],
    before: &[(String, u64, String, String)],
    extents_before: &[u64],
) {
    let t = Instant::now();
    let (report, summary) = defrag(&["--convert-block-mapped"], &[data]);
    eprintln!(
        "defrag --convert-block-mapped in {:.1} s: {summary:?}",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "{:<12} {:>4} {:>14} {:>6} {:>6} {:>6} {:>10}  lsattr",
        "file", "MiB", "outcome", "before", "after", "ideal", "filefrag"
    );
    for ((p, b), ff_before) in paths.iter().zip(before).zip(extents_before) {
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
