//! A maintenance job must not fill the page cache: a file that was not
//! cached before `defragd defrag` is not cached after it (measured with
//! util-linux `fincore`). e4defrag's residency on an identical copy is
//! printed for comparison.

use defragd_testkit as common;

use common::*;

/// Pages that may stay resident after defragd (a few, e.g. a page read
/// to verify something); far below the file's thousands of pages.
const MAX_RESIDENT_PAGES: u64 = 8;

/// A 64 MiB fragmented file and one small log beside it.
fn large_file_only() -> FixtureSpec {
    FixtureSpec {
        large_mib: 64,
        logs: 1,
        log_appends: 20,
        sparse: false,
        tiny: false,
        ..FixtureSpec::default()
    }
}

#[test]
fn defrag_leaves_an_uncached_file_uncached() {
    if !require_root() {
        return;
    }
    let mut img_a = LoopImage::create(ImageSpec::ext4(512));
    let fx = build_fixture(&mut img_a, &large_file_only());
    let mut img_b = img_a.duplicate();
    let large_a = img_a.root().join(&fx.large);
    let large_b = img_b.root().join(&fx.large);
    let before = file_state(&large_a);
    let total_pages = before.size.div_ceil(4096);

    for p in [&large_a, &large_b] {
        evict_file_cache_checked(p, MAX_RESIDENT_PAGES);
    }

    let (report, run) = defrag_json(&[], &[&large_a], 0);
    let f = report.file(&large_a);
    let resident_d = fincore_pages(&large_a);
    let after = file_state(&large_a);
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), filefrag {} -> {}, resident pages after: {resident_d} of {total_pages}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        before.extents,
        after.extents
    );

    let (ok, e4_time, _) = e4defrag(&[&large_b]);
    let resident_e = fincore_pages(&large_b);
    eprintln!(
        "e4defrag: {:.2}s, ok={ok}, filefrag -> {}, resident pages after: {resident_e} of {total_pages}",
        e4_time.as_secs_f64(),
        filefrag_extents(&large_b)
    );
    eprintln!("PAGE CACHE after defrag: defragd {resident_d} pages, e4defrag {resident_e} pages (file: {total_pages})");

    // Only meaningful if the file was really moved.
    assert_eq!(
        f.outcome, "defragmented",
        "defragd did not defragment the file: {f:?}"
    );
    assert!(
        after.extents < before.extents,
        "filefrag: {} -> {}",
        before.extents,
        after.extents
    );
    assert_eq!(after.md5, before.md5, "content changed");
    assert!(
        resident_d <= MAX_RESIDENT_PAGES,
        "defragd left {resident_d} of {total_pages} pages of the file in the page cache"
    );

    img_a.unmount_and_fsck();
    img_b.unmount_and_fsck();
    img_a.mount();
    assert_eq!(
        md5(&large_a),
        before.md5,
        "content on disk differs after a remount"
    );
}

/// The other half of "as it found it": a file the workload keeps hot stays
/// cached, so defragmenting it does not send the workload to disk.
#[test]
fn defrag_leaves_a_cached_file_cached() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(512));
    let fx = build_fixture(&mut img, &large_file_only());
    let large = img.root().join(&fx.large);
    assert_move_keeps_cached(&mut img, &large, MAX_RESIDENT_PAGES);
}
