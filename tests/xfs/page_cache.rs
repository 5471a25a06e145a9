//! The page cache as the XFS move found it (tests/page_cache.rs on ext4):
//! the copy reads the file with direct I/O and the swap drops the file's
//! cache, so defragd reads back what was resident and nothing more. A file
//! not cached before is not cached after (util-linux `fincore`); a cached
//! one stays cached.

use super::common::*;

/// Pages that may stay resident or go missing: a few, far below the
/// file's 16,384.
const SLACK_PAGES: u64 = 8;

fn image_with_large_file() -> (LoopImage, std::path::PathBuf) {
    require_tools(XFS_TOOLS);
    let spec = FixtureSpec {
        large_mib: 64,
        logs: 1,
        log_appends: 20,
        sparse: false,
        tiny: false,
        ..FixtureSpec::default()
    };
    let mut img = LoopImage::create(ImageSpec::xfs(512));
    let fx = build_fixture(&mut img, &spec);
    let large = img.root().join(&fx.large);
    (img, large)
}

#[test]
fn an_uncached_file_stays_uncached_after_its_move() {
    if !require_root() {
        return;
    }
    let (mut img, large) = image_with_large_file();
    let sum = md5(&large);
    let extents = xfs_bmap_extents(&large);
    let pages = std::fs::metadata(&large)
        .expect("stat")
        .len()
        .div_ceil(4096);
    evict_file_cache_checked(&large, SLACK_PAGES);

    let (report, run) = defrag_json(&[], &[&large], 0);
    let f = report.file(&large);
    let resident = fincore_pages(&large);
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), xfs_bmap {extents} -> {}, resident after: {resident} of {pages}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        xfs_bmap_extents(&large)
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    assert!(
        resident <= SLACK_PAGES,
        "defragd left {resident} of {pages} pages of the file in the page cache"
    );
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(&large), sum, "content on disk differs after a remount");
}

#[test]
fn a_cached_file_stays_cached_after_its_move() {
    if !require_root() {
        return;
    }
    let (mut img, large) = image_with_large_file();
    let sum = md5(&large);
    let cached = CachedBesideControl::new(&large, &img.root().join("control.bin"), SLACK_PAGES);

    let (report, run) = defrag_json(&[], &[&large], 0);
    let f = report.file(&large);
    let (after, control_lost) = cached.now();
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), resident {} -> {after} of {}; the control lost {control_lost}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        cached.resident_before,
        cached.pages
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    cached.assert_still_cached((after, control_lost));
    assert_eq!(md5(&large), sum, "content changed");
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(&large), sum, "content on disk differs after a remount");
}
