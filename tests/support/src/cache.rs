//! A file held in the page cache beside a control file, to judge whether a
//! move kept it there: what the machine reclaims meanwhile (CI, after a
//! build had filled memory with cache, saw 12 of 16,384 pages go) the
//! control, cached alike and left alone, loses too, and only what the file
//! loses beyond that is the move's doing.

use std::path::{Path, PathBuf};

use crate::{
    defrag_json, evict_file_cache_checked, fincore_pages, md5, read_all, write_seeded_file,
    LoopImage,
};

pub struct CachedBesideControl {
    file: PathBuf,
    control: PathBuf,
    /// The file's size in 4 KiB pages.
    pub pages: u64,
    /// The file's pages in the cache once both were read.
    pub resident_before: u64,
    control_before: u64,
    slack: u64,
}

impl CachedBesideControl {
    /// Writes `control`, as large as `file`, and reads both until each has
    /// all but `slack` of its pages in the cache: once in a full run (tests
    /// beside it) one read left 80 of 16,384 pages out, so up to three more
    /// reads. Panics when `file` still is not cached.
    pub fn new(file: &Path, control: &Path, slack: u64) -> Self {
        let size = std::fs::metadata(file)
            .unwrap_or_else(|e| panic!("stat {}: {e}", file.display()))
            .len();
        write_seeded_file(control, size, 0x9a9e_cac4e);
        let pages = size.div_ceil(4096);
        let mut cached = Self {
            file: file.to_path_buf(),
            control: control.to_path_buf(),
            pages,
            resident_before: 0,
            control_before: 0,
            slack,
        };
        for _ in 0..4 {
            read_all(file);
            read_all(control);
            cached.resident_before = fincore_pages(file);
            cached.control_before = fincore_pages(control);
            if cached.resident_before + slack >= pages && cached.control_before + slack >= pages {
                break;
            }
        }
        eprintln!(
            "before: {} of {pages} pages resident; the control file {}",
            cached.resident_before, cached.control_before
        );
        assert!(
            cached.resident_before + slack >= pages,
            "could not get {} into the page cache ({} of {pages} pages)",
            file.display(),
            cached.resident_before
        );
        cached
    }

    /// The file's pages in the cache now, and those the control lost since.
    pub fn now(&self) -> (u64, u64) {
        let control_lost = self
            .control_before
            .saturating_sub(fincore_pages(&self.control));
        (fincore_pages(&self.file), control_lost)
    }

    /// Panics when, in `reading` (what `now` said), the file lost more
    /// pages than the control did, past the slack.
    pub fn assert_still_cached(&self, reading: (u64, u64)) {
        let (after, control_lost) = reading;
        assert!(
            after + control_lost + self.slack >= self.resident_before,
            "defragd dropped a hot file from the page cache: {} -> {after} pages (the \
             untouched control file lost {control_lost})",
            self.resident_before
        );
    }
}

/// `defragd defrag FILE` on a file out of the page cache, on any
/// filesystem: it must be defragmented and leave no more than `slack` of
/// the file's pages cached, and its content must be on disk (the same
/// after a fsck and a mount). `layout` counts its extents with the
/// filesystem's own tool, for the log.
pub fn assert_move_leaves_uncached(
    img: &mut LoopImage,
    file: &Path,
    slack: u64,
    layout: fn(&Path) -> u64,
) {
    let (sum, before) = (md5(file), layout(file));
    let pages = std::fs::metadata(file)
        .unwrap_or_else(|e| panic!("stat {}: {e}", file.display()))
        .len()
        .div_ceil(4096);
    evict_file_cache_checked(file, slack);

    let (report, run) = defrag_json(&[], &[file], 0);
    let f = report.file(file);
    let resident = fincore_pages(file);
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), extents {before} -> {}, resident after: {resident} of {pages}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        layout(file)
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    assert!(
        resident <= slack,
        "defragd left {resident} of {pages} pages of the file in the page cache"
    );
    assert_content_on_disk(img, file, &sum);
}

/// `defragd defrag FILE` on a file held in the page cache beside an
/// untouched control file, on any filesystem: it must be defragmented,
/// stay cached (`CachedBesideControl::assert_still_cached`), and keep its
/// content, in memory and on disk.
pub fn assert_move_keeps_cached(img: &mut LoopImage, file: &Path, slack: u64) {
    let sum = md5(file);
    let cached = CachedBesideControl::new(file, &img.root().join("control.bin"), slack);

    let (report, run) = defrag_json(&[], &[file], 0);
    let f = report.file(file);
    let (after, control_lost) = cached.now();
    eprintln!(
        "defragd: {:.2}s, {} ({:?}), resident {} -> {after} of {}; the untouched control file \
         lost {control_lost}",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        cached.resident_before,
        cached.pages
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    cached.assert_still_cached((after, control_lost));
    assert_eq!(md5(file), sum, "content changed");
    assert_content_on_disk(img, file, &sum);
}

/// The file's content as the disk has it: after an unmount, a fsck and a
/// mount (then unmounted and checked again).
fn assert_content_on_disk(img: &mut LoopImage, file: &Path, sum: &str) {
    img.unmount_and_fsck();
    img.mount();
    assert_eq!(md5(file), sum, "content on disk differs after a remount");
    img.unmount_and_fsck();
}
