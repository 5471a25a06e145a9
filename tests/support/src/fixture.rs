//! The reproducible fragmenter: fragment free space with filler files,
//! write the files under test into the holes, then (usually) delete the
//! filler so contiguous free space exists for the defragmenter.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::fcntl::{fallocate, FallocateFlags};

use super::cmd::sync_fs;
use super::image::LoopImage;
use super::judge::{filefrag_extents, free_bytes, fs_bytes};
use super::seeded::Seeded;
use super::xfs::xfs_resblks;
use super::{KIB, MIB};

pub const FILLER_FILE: u64 = 64 * KIB;

/// XFS's reserve pool while free space is fragmented: 1 MiB of 4 KiB
/// blocks, enough for writeback's metadata, too little to hold a file
/// under test.
pub const XFS_FILL_RESERVE: u64 = 256;
/// Free space `fragment_free_space_with` fills on XFS a file at a time
/// (fsync'd), after the rest in one go.
const XFS_FILL_SLACK: u64 = 16 * 1024 * 1024;

/// Free space fragmented on purpose: the filler files still kept.
pub struct Filler {
    dir: PathBuf,
    kept: Vec<PathBuf>,
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENOSPC)
}

/// Fills the filesystem under `root` with 64 KiB files until about
/// `leave_free` bytes are left (or ENOSPC), commits, deletes every other one
/// and commits again: free space is then ~64 KiB holes between filler files.
pub fn fragment_free_space(root: &Path, leave_free: u64) -> Filler {
    fragment_free_space_with(root, "filler", FILLER_FILE, leave_free)
}

/// `fragment_free_space` with filler files of `piece` bytes in `root/name`.
/// On XFS it first shrinks the reserve pool to XFS_FILL_RESERVE blocks
/// (`xfs_resblks`): else the reserve (8,192 blocks) stays free in one
/// piece, statfs never counts it, and the files under test land in it
/// whole. Not to 0: writeback of the last filler files then finds no
/// blocks for its metadata ("Reserve blocks depleted!", writeback errors,
/// `sync -f` failing with ENOSPC; seen on an rmapbt image). The next
/// mount (`LoopImage::settle`) restores the reserve.
pub fn fragment_free_space_with(root: &Path, name: &str, piece: u64, leave_free: u64) -> Filler {
    let on_xfs = nix::sys::statfs::statfs(root)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::XFS_SUPER_MAGIC);
    if on_xfs {
        xfs_resblks(root, XFS_FILL_RESERVE);
    }
    let dir = root.join(name);
    fs::create_dir_all(&dir).expect("create filler dir");
    let block = vec![0x5au8; piece as usize];
    let mut written = Vec::new();
    if on_xfs {
        // With the reserve that small, filling XFS to its last block in
        // one go can fail the commit with ENOSPC (the last fillers'
        // writeback finds no blocks for its btrees; seen in CI with 32 KiB
        // fillers), losing their data. So: all but 16 MiB, committed (the
        // writes' own reservations for btree blocks take most of those 16:
        // with 4 MiB kept back, 0.5 MiB was left, and 1 run in 8 failed);
        // then the rest one file at a time, each committed, until one
        // fails (deleted: its blocks were never kept). The commit's own
        // metadata comes out of `leave_free`, as it would in one go.
        let free = free_bytes(root);
        let bulk = free.saturating_sub(leave_free.max(XFS_FILL_SLACK)) / piece;
        write_fillers(&dir, &block, &mut written, bulk, false);
        sync_allowing_enospc(root);
        let now = free_bytes(root);
        let metadata = (free - bulk * piece).saturating_sub(now);
        let rest = now.saturating_sub(leave_free.saturating_sub(metadata)) / piece;
        write_fillers(&dir, &block, &mut written, rest, true);
        sync_allowing_enospc(root);
    } else {
        let n = free_bytes(root).saturating_sub(leave_free) / piece;
        write_fillers(&dir, &block, &mut written, n, false);
    }
    sync_fs(root);
    let mut kept = Vec::new();
    for (i, p) in written.into_iter().enumerate() {
        if i % 2 == 1 {
            fs::remove_file(&p).expect("delete filler");
        } else {
            kept.push(p);
        }
    }
    sync_fs(root);
    Filler { dir, kept }
}

/// Commits the fillers written so far, where the filesystem may have
/// filled up in writeback rather than in write(): with the reserve pool
/// that small, the btree blocks of a filler's extents can find no room
/// (seen in CI in 1 run of about 10, after the bulk of 32 KiB fillers and
/// after the filler that found the filesystem full). XFS then drops those
/// pages, leaving the blocks free, and keeps the ENOSPC for the next
/// syncfs (the superblock's error sequence), where `sync -f` would fail on
/// it. Here that is expected: the fillers only take space, what one lost
/// stays free, and the fsync'd fillers that follow take it.
fn sync_allowing_enospc(root: &Path) {
    let dir = File::open(root).expect("open the mount point");
    match nix::unistd::syncfs(&dir) {
        Ok(()) | Err(nix::errno::Errno::ENOSPC) => {}
        Err(e) => panic!("syncfs {}: {e}", root.display()),
    }
}

/// Writes up to `count` more filler files of `block` into `dir` (named
/// after their number in `written`), each fsync'd when `commit_each`, until
/// the filesystem is full; the ones kept are pushed to `written`.
fn write_fillers(
    dir: &Path,
    block: &[u8],
    written: &mut Vec<PathBuf>,
    count: u64,
    commit_each: bool,
) {
    for _ in 0..count {
        let p = dir.join(format!("f{:06}", written.len()));
        let res = File::create(&p).and_then(|mut f| {
            f.write_all(block)?;
            if commit_each {
                f.sync_all()?;
            }
            Ok(())
        });
        match res {
            Ok(()) => written.push(p),
            Err(e) if is_enospc(&e) => {
                let _ = fs::remove_file(&p);
                return;
            }
            Err(e) => panic!("write filler {}: {e}", p.display()),
        }
    }
}

impl Filler {
    /// Deletes the rest of the filler: contiguous free space appears where
    /// no file under test landed.
    pub fn delete_all(self, root: &Path) {
        for p in &self.kept {
            fs::remove_file(p).expect("delete filler");
        }
        fs::remove_dir(&self.dir).expect("remove filler dir");
        sync_fs(root);
    }
    pub fn count(&self) -> usize {
        self.kept.len()
    }
}

/// Writes `data` to a new file in `piece`-byte writes, each followed by fsync.
pub fn write_fsynced(path: &Path, data: &[u8], piece: usize) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for chunk in data.chunks(piece) {
        f.write_all(chunk)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        f.sync_all().expect("fsync");
    }
}

/// Writes a seeded file of `size` bytes in 256 KiB fsync'd pieces. Run it
/// inside fragmented free space and it lands in many extents.
pub fn write_seeded_file(path: &Path, size: u64, seed: u64) {
    let mut rng = Seeded::new(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let piece = 256 * KIB;
    let mut left = size;
    let mut buf = vec![0u8; piece as usize];
    while left > 0 {
        let n = left.min(piece) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        f.sync_all().expect("fsync");
        left -= n as u64;
    }
}

/// Fragmented files: fragments free space (leaving about `leave_free`
/// bytes unfilled), writes each (path, size, seed) into the holes and
/// asserts it really is fragmented. Returns the filler: delete it to get
/// contiguous free space, keep it to have none.
pub fn make_fragmented_files(root: &Path, files: &[(&Path, u64, u64)], leave_free: u64) -> Filler {
    let filler = fragment_free_space(root, leave_free);
    for &(path, size, seed) in files {
        write_seeded_file(path, size, seed);
        let n = filefrag_extents(path);
        let min = (size / MIB).clamp(2, 50);
        assert!(
            n > min,
            "fixture: {} has only {n} extents; expected > {min}",
            path.display()
        );
    }
    filler
}

#[derive(Clone, Debug)]
pub struct FixtureSpec {
    pub seed: u64,
    pub large_mib: u64,
    pub logs: usize,
    pub log_appends: usize,
    pub sparse: bool,
    pub tiny: bool,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            seed: 0xdef7a6d,
            large_mib: 128,
            logs: 3,
            log_appends: 400,
            sparse: true,
            tiny: true,
        }
    }
}

/// The files of a fixture, as paths relative to the mount point (so they
/// name the same files on an identical copy of the image).
#[derive(Clone, Debug)]
pub struct Fixture {
    pub dir: PathBuf,
    pub large: PathBuf,
    pub logs: Vec<PathBuf>,
    pub sparse: Vec<PathBuf>,
    pub tiny: Vec<PathBuf>,
}

/// Builds the fixture in `img`'s data/: fragments free space, writes the
/// files under test into the holes, deletes the rest of the filler and
/// settles the filesystem (see `LoopImage::settle`).
pub fn build_fixture(img: &mut LoopImage, spec: &FixtureSpec) -> Fixture {
    let root = img.root().to_path_buf();
    let root = root.as_path();
    let t = Instant::now();
    let mut rng = Seeded::new(spec.seed);
    let filler = fragment_free_space(root, 2 * MIB);
    let dir = PathBuf::from("data");
    fs::create_dir_all(root.join(&dir)).expect("create data dir");
    fs::create_dir_all(root.join(&dir).join("logs")).expect("create logs dir");

    // Appended logs: small fsync'd appends, interleaved between the logs.
    let logs: Vec<PathBuf> = (0..spec.logs)
        .map(|i| dir.join("logs").join(format!("app{i}.log")))
        .collect();
    {
        let mut handles: Vec<File> = logs
            .iter()
            .map(|p| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(root.join(p))
                    .expect("open log")
            })
            .collect();
        for n in 0..spec.log_appends {
            for (i, f) in handles.iter_mut().enumerate() {
                let len = rng.range(512, 12 * KIB) as usize;
                let mut rec = format!("{n:08} log{i} ").into_bytes();
                let body = rng.bytes(len);
                rec.extend(body.iter().map(|b| b'a' + b % 26));
                rec.push(b'\n');
                f.write_all(&rec).expect("append log");
                f.sync_all().expect("fsync log");
            }
        }
    }

    // The large file.
    let large = dir.join("large.bin");
    write_seeded_file(&root.join(&large), spec.large_mib * MIB, rng.next_u64());

    // Sparse files: pieces written out of order at offsets leaving holes;
    // the second also gets holes punched into a dense file.
    let mut sparse = Vec::new();
    if spec.sparse {
        let p = dir.join("sparse-offsets.bin");
        let f = File::create(root.join(&p)).expect("create sparse");
        let slots = 48u64; // 48 MiB logical, 256 KiB data per MiB
        let mut order: Vec<u64> = (0..slots).collect();
        for i in (1..order.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            order.swap(i, j);
        }
        for slot in order {
            let data = rng.bytes(256 * KIB as usize);
            f.write_all_at(&data, slot * MIB + rng.range(0, 3) * 64 * KIB)
                .expect("pwrite sparse");
            f.sync_all().expect("fsync sparse");
        }
        f.set_len(slots * MIB + 123).expect("extend sparse");
        f.sync_all().expect("fsync sparse");
        sparse.push(p);

        let p = dir.join("sparse-punched.bin");
        write_fsynced(
            &root.join(&p),
            &rng.bytes(16 * MIB as usize),
            64 * KIB as usize,
        );
        let f = OpenOptions::new()
            .write(true)
            .open(root.join(&p))
            .expect("open punched");
        for i in 0..8u64 {
            let off = (i * 2 * MIB + 512 * KIB) as i64;
            fallocate(
                &f,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off,
                (512 * KIB) as i64,
            )
            .expect("punch hole");
        }
        f.sync_all().expect("fsync punched");
        sparse.push(p);
    }

    // Tiny files: below one block, and a few of 1-3 blocks.
    let mut tiny = Vec::new();
    if spec.tiny {
        fs::create_dir_all(root.join(&dir).join("tiny")).expect("create tiny dir");
        for (i, len) in [1u64, 100, 2000, 4000, 4096, 6000, 8192, 12000]
            .into_iter()
            .enumerate()
        {
            let p = dir.join("tiny").join(format!("t{i}-{len}"));
            write_fsynced(&root.join(&p), &rng.bytes(len as usize), len as usize);
            tiny.push(p);
        }
    }

    filler.delete_all(root);
    img.settle();
    let fx = Fixture {
        dir,
        large,
        logs,
        sparse,
        tiny,
    };

    let large_extents = filefrag_extents(&root.join(&fx.large));
    eprintln!(
        "fixture built in {:.1}s: large {} MiB in {large_extents} extents; logs {:?}; sparse {:?}; free {} MiB of {} MiB",
        t.elapsed().as_secs_f64(),
        spec.large_mib,
        fx.logs.iter().map(|p| filefrag_extents(&root.join(p))).collect::<Vec<_>>(),
        fx.sparse.iter().map(|p| filefrag_extents(&root.join(p))).collect::<Vec<_>>(),
        free_bytes(root) / MIB,
        fs_bytes(root) / MIB,
    );
    assert!(
        large_extents > 50,
        "fixture: the large file has only {large_extents} extents; expected > 50"
    );
    fx
}

// Writing files the way fragmenting writers do.

/// Appends `piece` bytes from `rng` to `f` and fsyncs.
pub fn append_synced(f: &mut File, rng: &mut Seeded, piece: usize) {
    f.write_all(&rng.bytes(piece)).expect("append");
    f.sync_all().expect("fsync");
}

pub fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Writes `size` bytes to each of `files`, interleaved: `piece` bytes to
/// each in turn, fsync after every piece. Returns the open handles.
pub fn interleaved_writes(
    files: &[PathBuf],
    size: u64,
    piece: usize,
    rng: &mut Seeded,
) -> Vec<File> {
    let mut handles: Vec<File> = files.iter().map(|p| open_append(p)).collect();
    for _ in 0..size / piece as u64 {
        for f in handles.iter_mut() {
            append_synced(f, rng, piece);
        }
    }
    handles
}

/// Deletes the filler in a thread while `handles` keep being appended to
/// (one `piece` each every `every`), until the filler is gone and `settle`
/// more has passed (ext4 hands freed blocks back lazily). The files stay
/// "being written" all along, so the service cannot judge them before
/// contiguous free space exists. Returns the number of rounds of appends.
pub fn delete_filler_while_writing(
    filler: Filler,
    root: &Path,
    handles: &mut [File],
    rng: &mut Seeded,
    piece: usize,
    every: Duration,
    settle: Duration,
) -> u64 {
    let root2 = root.to_path_buf();
    let deleter = std::thread::spawn(move || filler.delete_all(&root2));
    let mut deleted_at: Option<Instant> = None;
    let mut rounds = 0;
    loop {
        if deleted_at.is_none() && deleter.is_finished() {
            deleted_at = Some(Instant::now());
        }
        if deleted_at.is_some_and(|t| t.elapsed() >= settle) {
            break;
        }
        sleep(every);
        for f in handles.iter_mut() {
            append_synced(f, rng, piece);
        }
        rounds += 1;
    }
    deleter.join().expect("filler deleter");
    rounds
}
