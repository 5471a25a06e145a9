//! The XFS exchange's COMMIT_RANGE mode, run for real. mkfs.xfs 6.1
//! cannot make exchange-range filesystems, so the image gets the feature
//! the way a newer mkfs would record it: the superblock's incompat bit
//! XFS_SB_FEAT_INCOMPAT_EXCHRANGE (1 << 6, fs/xfs/libxfs/xfs_format.h),
//! set with `xfs_db -x` (verifier off, CRC recomputed) on the fresh,
//! unmounted image. The bit only allows exchange intents in the log; an
//! empty filesystem has none, and a 6.10+ kernel then mounts it with the
//! feature. xfs_repair 6.1 refuses such an image (an unknown feature), so
//! no repair check here; md5 and the kernel's own mount are the judges.
//! On a kernel without the feature or the commit ioctls the tests skip.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use defragd::assess::{BlockRange, ExtentMap};
use defragd::backend::xfs::{Exchange, Mode};
use defragd::plan::{chunk_blocks, chunks, Chunk};
use defragd::sys::{self, Flush};
use defragd::xfs::{self, CommitError, CommitRequest};
use defragd_testkit as common;

use common::*;

const XFS_SB_FEAT_INCOMPAT_EXCHRANGE: u64 = 1 << 6;

/// An XFS image with the exchange-range feature, mounted with
/// allocsize=64k (so interleaved writes fragment); None, after saying
/// why, where this kernel does not offer COMMIT_RANGE on it.
fn exchange_range_image() -> Option<LoopImage> {
    let mut img = LoopImage::create(ImageSpec::xfs(512).mount_opts("allocsize=64k"));
    img.unmount();
    let image = img.image_path().as_os_str().to_owned();
    let db = |commands: &[&str]| {
        let mut args = vec![OsStr::new("-x")];
        for c in commands {
            args.extend([OsStr::new("-c"), OsStr::new(c)]);
        }
        args.push(&image);
        sh_status("xfs_db", args)
    };
    let (_, out, _) = db(&["sb 0", "print features_incompat"]);
    let value = out.split('=').nth(1).map(str::trim).unwrap_or_default();
    let old = u64::from_str_radix(value.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("features_incompat from xfs_db: {out:?}"));
    let new = format!("{:#x}", old | XFS_SB_FEAT_INCOMPAT_EXCHRANGE);
    // xfs_db 6.1's verifier does not know the bit: write past it (-d),
    // then recompute the CRC (its complaint about the unknown bit is
    // expected).
    db(&[
        "sb 0",
        &format!("write -d features_incompat {new}"),
        "crc -r",
    ]);
    let (_, check, _) = db(&["sb 0", "print features_incompat", "crc"]);
    assert!(
        check.contains(&new) && check.contains("(correct)"),
        "{check}"
    );
    img.mount();
    let root = File::open(img.root()).expect("open root");
    let g = xfs::geometry(root.as_fd()).expect("geometry");
    if !g.exchange_range {
        eprintln!("SKIPPED: this kernel (before 6.10) does not know exchange-range");
        return None;
    }
    if let Err(e) = xfs::start_commit(root.as_fd()) {
        eprintln!("SKIPPED: this kernel (before 6.12) has no START_COMMIT: {e}");
        return None;
    }
    Some(img)
}

/// `size` bytes at `path`, written 64 KiB at a time interleaved with as
/// much to another file (then deleted), each write synced: fragmented.
fn fragmented_file(path: &Path, size: u64, tail: usize, seed: u64) {
    let other = path.with_extension("other");
    let mut rng = Seeded::new(seed);
    let a = File::create(path).expect("create");
    let b = File::create(&other).expect("create the other");
    let mut at = 0;
    while at < size {
        for f in [&a, &b] {
            f.write_all_at(&rng.bytes(64 << 10), at).expect("write");
            f.sync_data().expect("fdatasync");
        }
        at += 64 << 10;
    }
    a.write_all_at(&rng.bytes(tail), at)
        .expect("write the tail");
    a.sync_all().expect("fsync");
    std::fs::remove_file(other).expect("delete the other");
}

fn open_rw(path: &Path) -> (File, File) {
    let dir = File::open(path.parent().expect("parent")).expect("open dir");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    (dir, file)
}

fn data_ranges(file: &File) -> Vec<BlockRange> {
    let raw = sys::fiemap(file.as_fd(), Flush::Yes).expect("FIEMAP");
    ExtentMap::from_fiemap(&raw, 4096).data_ranges()
}

/// The physical start of each extent of the file's first `len` bytes.
fn physical_head(file: &File, len: u64) -> Vec<(u64, u64)> {
    let raw = sys::fiemap(file.as_fd(), Flush::No).expect("FIEMAP");
    raw.iter()
        .filter(|e| e.logical < len)
        .map(|e| (e.logical, e.physical))
        .collect()
}

fn build(file: &File, dir: &File, ranges: &[BlockRange]) -> Exchange {
    let size = file.metadata().expect("stat").len();
    Exchange::build(file.as_fd(), dir.as_fd(), ranges, 4096, size, 1.0)
        .unwrap_or_else(|r| panic!("build the exchange: {r:?}"))
}

fn plan(ranges: &[BlockRange]) -> Vec<Chunk> {
    chunks(ranges, chunk_blocks(8 << 20, 4096), 0)
}

/// Chunk by chunk, each committed on its own: the data and the file's
/// times stay, the file ends in one extent; a resumed exchange over the
/// rest alone (a donor for part of the file, which SWAPEXT could not
/// take) finishes it; `defragd defrag` does the same through the mover.
#[test]
fn chunks_are_committed_one_by_one_and_a_resume_finishes_the_rest() {
    if !require_root() {
        return;
    }
    let Some(img) = exchange_range_image() else {
        return;
    };
    let path = img.root().join("fragmented");
    fragmented_file(&path, 40 << 20, 1234, 11);
    let (md5_before, extents_before) = (md5(&path), filefrag_extents(&path));
    let times = std::fs::metadata(&path).expect("stat");
    assert!(extents_before > 100, "{extents_before} extents");
    let (dir, file) = open_rw(&path);
    let (backend, info) = defragd::backend::probe(file.as_fd()).expect("probe");
    assert!(backend.resumes_mid_file(&info), "commits resume mid-file");

    let ranges = data_ranges(&file);
    let mut exchange = build(&file, &dir, &ranges);
    assert_eq!(exchange.mode(), Mode::CommitRange);
    let all = plan(&ranges);
    assert!(all.len() >= 5, "{} chunks", all.len());
    // Two chunks, then a stop.
    for chunk in &all[..2] {
        exchange.relocate(chunk).expect("commit a chunk");
    }
    exchange.make_durable().expect("fsync");
    drop(exchange);
    assert_eq!(md5(&path), md5_before, "after two chunks");
    let head = physical_head(&file, 16 << 20);
    assert!(head.len() <= 2, "the first 16 MiB are committed: {head:?}");

    // The resume: a donor for the rest only.
    let rest: Vec<BlockRange> = data_ranges(&file)
        .iter()
        .filter_map(|r| {
            let start = r.start.max(all[2].start);
            (r.end() > start).then(|| BlockRange {
                start,
                len: r.end() - start,
            })
        })
        .collect();
    let mut exchange = build(&file, &dir, &rest);
    for chunk in plan(&rest) {
        exchange.relocate(&chunk).expect("commit a chunk");
    }
    exchange.make_durable().expect("fsync");
    drop(exchange);
    let after = std::fs::metadata(&path).expect("stat");
    let t = |m: &std::fs::Metadata| (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
    assert_eq!(t(&after), t(&times), "the commits leave the times alone");
    assert_eq!(md5(&path), md5_before);
    let extents_after = filefrag_extents(&path);
    eprintln!("extents {extents_before} -> {extents_after}");
    assert!(extents_after <= 3, "{extents_after} extents");

    let second = img.root().join("second");
    fragmented_file(&second, 24 << 20, 77, 12);
    let md5_second = md5(&second);
    let (report, _) = defrag_json(&[], &[second.as_path()], 0);
    let f = report.file(&second);
    assert_eq!(f.outcome, "defragmented", "{:?}", f.reason);
    assert_eq!(md5(&second), md5_second);
}

/// A write between START_COMMIT and COMMIT_RANGE makes the commit refuse
/// with EBUSY and the write stays; a commit made durable survives a power
/// cut (a shutdown without log flush) and the log replay after it.
#[test]
fn a_write_makes_the_commit_refuse_and_a_durable_commit_survives_a_crash() {
    if !require_root() {
        return;
    }
    let Some(mut img) = exchange_range_image() else {
        return;
    };
    let path = img.root().join("fragmented");
    fragmented_file(&path, 24 << 20, 0, 21);
    let (dir, file) = open_rw(&path);

    // The race, by hand: sample, write, commit.
    let donor = sys::create_tmpfile(dir.as_fd()).expect("O_TMPFILE");
    let size = file.metadata().expect("stat").len();
    sys::set_len(donor.as_fd(), size).expect("donor size");
    let mut head = vec![0u8; 1 << 20];
    file.read_exact_at(&mut head, 0).expect("read");
    let _ = std::fs::metadata(&path); // the ctime was seen: the write gets a new one
    let fresh = xfs::start_commit(file.as_fd()).expect("START_COMMIT");
    nix::sys::uio::pwrite(&donor, &head, 0).expect("copy into the donor");
    sys::sync_all(donor.as_fd()).expect("fsync the donor");
    file.write_all_at(b"written meanwhile", 100)
        .expect("the writer");
    let request = CommitRequest {
        offset: 0,
        length: 1 << 20,
        flags: 0,
    };
    let refused = xfs::commit_range(file.as_fd(), donor.as_fd(), request, &fresh);
    assert_eq!(refused, Err(CommitError::Changed));
    let mut back = [0u8; 17];
    file.read_exact_at(&mut back, 100).expect("read back");
    assert_eq!(&back, b"written meanwhile", "the write stays");
    drop(donor);

    let md5_before = md5(&path);
    let ranges = data_ranges(&file);
    let mut exchange = build(&file, &dir, &ranges);
    let all = plan(&ranges);
    for chunk in &all[..2] {
        exchange.relocate(chunk).expect("commit a chunk");
    }
    exchange.make_durable().expect("fsync");
    let durable = physical_head(&file, 16 << 20);
    // Nothing after the fsync: were it not what makes the commits
    // durable, the power cut would take the second one back.
    xfs_shutdown(img.root(), ShutdownFlag::NoLogFlush);
    drop((exchange, file, dir));
    img.unmount();
    img.mount();
    let file = File::open(&path).expect("open after the replay");
    assert_eq!(md5(&path), md5_before, "the data after the crash");
    assert_eq!(
        physical_head(&file, 16 << 20),
        durable,
        "the durable chunks are where they were committed"
    );
}

/// Stops a move after `chunks` chunks; keeps what it was told.
struct StopAfter {
    chunks: usize,
    seen: Vec<defragd::mover::Progress>,
}

impl defragd::mover::Supervisor for StopAfter {
    fn before_chunk(&mut self, _bytes: u64) -> defragd::mover::Control {
        if self.seen.len() >= self.chunks {
            defragd::mover::Control::Stop
        } else {
            defragd::mover::Control::Continue
        }
    }
    fn after_chunk(&mut self, progress: &defragd::mover::Progress) {
        self.seen.push(*progress);
    }
}

/// Through the mover: a move stopped after two chunks says where to
/// resume, each chunk reported durable as soon as it is committed; the resumed move starts there, not at the file's start,
/// and finishes it. SWAPEXT would have started over.
#[test]
fn the_mover_resumes_a_stopped_move_at_its_cursor() {
    use defragd::mover::{defragment, MoveOptions};
    use defragd::outcome::Outcome;
    use std::sync::Arc;
    if !require_root() {
        return;
    }
    let Some(img) = exchange_range_image() else {
        return;
    };
    let path = img.root().join("fragmented");
    fragmented_file(&path, 40 << 20, 4000, 31);
    let md5_before = md5(&path);
    let times = std::fs::metadata(&path).expect("stat");
    let target = defragd::target::Target {
        dir: Arc::new(File::open(img.root()).expect("open root").into()),
        name: "fragmented".into(),
        path: path.clone(),
        expected_dev: None,
        expected_identity: None,
    };
    let mut filesystems = defragd::inspect::Filesystems::default();
    let options = MoveOptions::default();
    let mut first = StopAfter {
        chunks: 2,
        seen: Vec::new(),
    };
    let outcome = defragment(&target, &mut filesystems, &options, 0, &mut first);
    let Outcome::Interrupted { next_block, .. } = outcome else {
        panic!("the move stops: {outcome:?}");
    };
    // Chunks of at least 8 MiB on XFS, whatever chunk_mib says.
    assert_eq!(first.seen.len(), 2);
    assert_eq!(next_block, 2 * 2048, "{:?}", first.seen);
    // Each chunk made durable at once: a crash redoes one chunk at most.
    assert!(first.seen.iter().all(|p| p.durable), "{:?}", first.seen);
    assert_eq!(md5(&path), md5_before, "after the stop");

    let mut rest = StopAfter {
        chunks: usize::MAX,
        seen: Vec::new(),
    };
    let outcome = defragment(&target, &mut filesystems, &options, next_block, &mut rest);
    assert!(
        matches!(outcome, Outcome::Defragmented(_)),
        "the resumed move: {outcome:?}"
    );
    let start = rest.seen.first().expect("a chunk");
    assert_eq!(
        start.offset_bytes - start.chunk_bytes,
        next_block * 4096,
        "the resumed move starts at the cursor"
    );
    assert!(rest.seen.last().is_some_and(|p| p.durable));
    assert_eq!(md5(&path), md5_before);
    let after = std::fs::metadata(&path).expect("stat");
    assert_eq!(
        (
            after.mtime(),
            after.mtime_nsec(),
            after.ctime(),
            after.ctime_nsec()
        ),
        (
            times.mtime(),
            times.mtime_nsec(),
            times.ctime(),
            times.ctime_nsec()
        )
    );
    let extents = filefrag_extents(&path);
    assert!(extents <= 3, "{extents} extents");
}
