//! Fragmented files in fragmented free space (the kit's fixture: a large
//! file, interleaved appended logs, sparse files, tiny files), moved by
//! `defragd defrag` on one image and by `xfs_fsr` on an identical copy:
//! every file keeps its content and identity (md5, inode, generation,
//! mtime, ctime, holes), `xfs_repair -n` is clean on both, and defragd
//! leaves no more extents (by `xfs_bmap`) than xfs_fsr does. Both times
//! are printed; speed is the benchmark's business (bench/run --fs xfs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::common::*;

/// xfs_bmap's extent count of every regular file under `dir`.
fn bmap_counts(dir: &std::path::Path) -> BTreeMap<PathBuf, u64> {
    regular_files(dir)
        .into_iter()
        .map(|rel| {
            let n = xfs_bmap_extents(&dir.join(&rel));
            (rel, n)
        })
        .collect()
}

#[test]
fn defragd_leaves_no_more_extents_than_xfs_fsr_and_every_file_intact() {
    if !require_root() {
        return;
    }
    require_tools(XFS_TOOLS);
    let spec = FixtureSpec {
        large_mib: 96,
        ..FixtureSpec::default()
    };
    let mut img_a = LoopImage::create(ImageSpec::xfs(640));
    let fx = build_fixture(&mut img_a, &spec);
    let mut img_b = img_a.duplicate();
    let dir_a = img_a.root().join(&fx.dir);
    let dir_b = img_b.root().join(&fx.dir);
    let before = snapshot(&dir_a);
    let counts_before = bmap_counts(&dir_a);

    let (report, run) = defrag_json(&[], &[&dir_a], 0);
    for f in &report.files {
        eprintln!(
            "defragd: {} {} {:?} {:?} -> {:?}",
            f.path, f.outcome, f.reason_code, f.extents_before, f.extents_after
        );
    }
    assert_eq!(report.summary.failed, 0, "{:?}", report.summary);

    let t = Instant::now();
    let mut fsr_time = Duration::ZERO;
    for rel in regular_files(&dir_b) {
        fsr_time += xfs_fsr(&dir_b.join(rel)).elapsed;
    }
    eprintln!("xfs_fsr over every file: {:.2}s", t.elapsed().as_secs_f64());

    let after = snapshot(&dir_a);
    assert_preserved(&before, &after, "defragd");
    let counts_d = bmap_counts(&dir_a);
    let counts_f = bmap_counts(&dir_b);
    eprintln!(
        "{:<32} {:>8} {:>8} {:>8}",
        "file", "before", "defragd", "xfs_fsr"
    );
    for (rel, b) in &counts_before {
        eprintln!(
            "{:<32} {b:>8} {:>8} {:>8}",
            rel.display(),
            counts_d[rel],
            counts_f[rel]
        );
    }
    let total = |c: &BTreeMap<PathBuf, u64>| c.values().sum::<u64>();
    let (tb, td, tf) = (total(&counts_before), total(&counts_d), total(&counts_f));
    eprintln!(
        "XFS EXTENTS: before {tb}, defragd {td} in {:.2}s, xfs_fsr {tf} in {:.2}s",
        run.elapsed.as_secs_f64(),
        fsr_time.as_secs_f64()
    );
    let large = &fx
        .large
        .strip_prefix(&fx.dir)
        .expect("under data")
        .to_path_buf();
    assert!(
        report.file(&dir_a.join(large)).outcome == "defragmented",
        "the large file was not defragmented"
    );
    for (rel, d) in &counts_d {
        assert!(
            *d <= counts_f[rel].max(1),
            "{}: defragd left {d} extents, xfs_fsr {}",
            rel.display(),
            counts_f[rel]
        );
    }
    assert!(td <= tf, "defragd left {td} extents in all, xfs_fsr {tf}");

    img_a.unmount_and_fsck();
    img_b.unmount_and_fsck();
    img_a.mount();
    let remounted = snapshot(&dir_a);
    for (rel, s) in &before {
        assert_eq!(
            remounted[rel].md5,
            s.md5,
            "{} after a remount",
            rel.display()
        );
    }
}
