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
    assert_move_leaves_uncached(&mut img, &large, SLACK_PAGES, xfs_bmap_extents);
}

#[test]
fn a_cached_file_stays_cached_after_its_move() {
    if !require_root() {
        return;
    }
    let (mut img, large) = image_with_large_file();
    assert_move_keeps_cached(&mut img, &large, SLACK_PAGES);
}
