//! The page cache as the btrfs move found it (tests/page_cache.rs on ext4,
//! tests/xfs/page_cache.rs on XFS). btrfs' defragmenter rewrites a range
//! through the page cache and reads ahead past it; defragd drops what it
//! brought in and keeps what was there. A file not cached before is not
//! cached after (util-linux `fincore`); a cached one stays cached.

use std::path::PathBuf;

use defragd_testkit as common;
use defragd_testkit::{
    assert_move_keeps_cached, assert_move_leaves_uncached, filefrag_extents, ImageSpec, LoopImage,
    MIB,
};

use crate::fragmented;

/// Pages that may stay resident or go missing: a few, far below the
/// file's 16,384.
const SLACK_PAGES: u64 = 8;

fn image_with_fragmented_file() -> (LoopImage, PathBuf) {
    let img = LoopImage::create(ImageSpec::btrfs(512));
    let root = img.root().to_path_buf();
    let file = root.join("big");
    fragmented(std::slice::from_ref(&file), 64 * MIB, 128 * 1024);
    (img, file)
}

#[test]
fn an_uncached_file_stays_uncached_after_its_move() {
    if !common::require_root() {
        return;
    }
    let (mut img, file) = image_with_fragmented_file();
    assert_move_leaves_uncached(&mut img, &file, SLACK_PAGES, filefrag_extents);
}

#[test]
fn a_cached_file_stays_cached_after_its_move() {
    if !common::require_root() {
        return;
    }
    let (mut img, file) = image_with_fragmented_file();
    assert_move_keeps_cached(&mut img, &file, SLACK_PAGES);
}
