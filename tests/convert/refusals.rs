//! Tests 3 and 4: what is not converted: a file open for writing by another
//! process ("busy"), and anything on a filesystem without the extent
//! feature ("no_extent_feature").

use super::*;

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
