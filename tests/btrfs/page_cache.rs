//! The page cache as the btrfs move found it (tests/page_cache.rs on ext4,
//! tests/xfs/page_cache.rs on XFS). btrfs' defragmenter rewrites a range
//! through the page cache and reads ahead past it; defragd drops what it
//! brought in and keeps what was there. A file not cached before is not
//! cached after (util-linux `fincore`); a cached one stays cached.

use std::path::PathBuf;

use defragd_testkit as common;
use defragd_testkit::{
    defrag_json, evict_file_cache_checked, filefrag_extents, fincore_pages, md5,
    CachedBesideControl, ImageSpec, LoopImage, MIB,
};

use crate::fragmented;

/// Pages that may stay resident or go missing: a few, far below the
/// file's 16,384.
const SLACK_PAGES: u64 = 8;

fn image_with_fragmented_file() -> (LoopImage, PathBuf, u64) {
    let img = LoopImage::create(ImageSpec::btrfs(512));
    let root = img.root().to_path_buf();
    let file = root.join("big");
    fragmented(std::slice::from_ref(&file), 64 * MIB, 128 * 1024);
    let pages = std::fs::metadata(&file).expect("stat").len().div_ceil(4096);
    (img, file, pages)
}

#[test]
fn an_uncached_file_stays_uncached_after_its_move() {
    if !common::require_root() {
        return;
    }
    let (mut img, file, pages) = image_with_fragmented_file();
    let (sum, before) = (md5(&file), filefrag_extents(&file));
    evict_file_cache_checked(&file, SLACK_PAGES);

    let (report, run) = defrag_json(&[], &[&file], 0);
    let f = report.file(&file);
    let resident = fincore_pages(&file);
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), extents {before} -> {}, resident after: {resident} of {pages}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        filefrag_extents(&file)
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    assert!(
        resident <= SLACK_PAGES,
        "defragd left {resident} of {pages} pages of the file in the page cache"
    );
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(&file), sum, "content on disk differs after a remount");
    img.unmount_and_fsck();
}

#[test]
fn a_cached_file_stays_cached_after_its_move() {
    if !common::require_root() {
        return;
    }
    let (mut img, file, _) = image_with_fragmented_file();
    let sum = md5(&file);
    let cached = CachedBesideControl::new(&file, &img.root().join("control.bin"), SLACK_PAGES);

    let (report, run) = defrag_json(&[], &[&file], 0);
    let f = report.file(&file);
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
    assert_eq!(md5(&file), sum, "content changed");
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(&file), sum, "content on disk differs after a remount");
    img.unmount_and_fsck();
}
