//! Defragmenting one file: check every precondition, fdatasync, build a
//! donor over exactly the file's data ranges (holes stay holes), make sure
//! it is really better, then MOVE_EXT chunk by chunk, checking `moved_len`
//! after every call, and leave the page cache as it was found.
//!
//! The mover never copies data itself and never holds a file open after it
//! returns. Pacing and stopping are the supervisor's business.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::assess::{clip_to_eof, ideal_extents, Assessment, BlockRange, ExtentMap, MapProblem};
use crate::ext4::{self, Access, Flush, Residency, Wait};
use crate::inspect::{inspect, Filesystems, Inspected, Refusal, Settle, Target};
use crate::outcome::{FailReason, Moved, Outcome, Size, SkipReason};
use crate::plan::{self, Chunk};

/// 1 MiB chunks: a writer to the same file waits at most one chunk (about
/// 20 ms at MOVE_EXT's pace) where a whole-file call stalls it for seconds,
/// and the throughput is the same.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;
pub const DEFAULT_RESERVE_PERCENT: f64 = 5.0;

#[derive(Debug, Clone, PartialEq)]
pub struct MoveOptions {
    pub chunk_bytes: u64,
    /// Share of the filesystem that must stay free after the donor is made.
    pub reserve_percent: f64,
    /// Check everything, move nothing.
    pub dry_run: bool,
    /// Leave files written more recently than this alone.
    pub quiet_period: Option<std::time::Duration>,
    /// Convert block-mapped files to extents first (not crash-safe; off by
    /// default).
    pub convert_block_mapped: bool,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            reserve_percent: DEFAULT_RESERVE_PERCENT,
            dry_run: false,
            quiet_period: None,
            convert_block_mapped: false,
        }
    }
}

/// Whether to go on with the next chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Where a move stands, after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Moved by the chunk just done.
    pub chunk_bytes: u64,
    pub moved_bytes: u64,
    pub total_bytes: u64,
    /// The first block not yet moved: where a resumed job starts.
    pub next_block: u64,
    /// `next_block` in bytes: how far through the file the move is.
    pub offset_bytes: u64,
    /// Everything before `next_block` is committed to disk: a cursor saved
    /// now survives a power cut.
    pub durable: bool,
}

/// Paces a move and may stop it between chunks (throttle, pause, shutdown).
pub trait Supervisor {
    /// Called before each chunk of `bytes`; may sleep, or ask to stop.
    fn before_chunk(&mut self, bytes: u64) -> Control;
    /// Called after each chunk.
    fn after_chunk(&mut self, progress: &Progress);
    /// Called right before a block-mapped file is converted to extents.
    /// The kernel's conversion is not crash-safe: the service records it
    /// durably here, so that after a crash it can name the file.
    fn converting(&mut self, _file: &crate::convert::Converting<'_>) {}
    /// Called once the conversion is over (done or refused).
    fn converted(&mut self) {}
}

/// Defragments `target`, starting at logical block `resume_at` (0 for a
/// new job).
pub fn defragment(
    target: &Target,
    filesystems: &mut Filesystems,
    options: &MoveOptions,
    resume_at: u64,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let inspected = match inspect(target, filesystems, Settle::SyncData) {
        Ok(inspected) => inspected,
        Err(Refusal::Skip(reason)) => {
            return Outcome::Skipped {
                reason,
                before: None,
            }
        }
        Err(Refusal::Fail(reason)) => {
            return Outcome::Failed {
                reason,
                before: None,
                bytes_moved: 0,
            }
        }
    };
    if options.convert_block_mapped && !inspected.flags.extent_mapped() {
        return crate::convert::convert_then_defragment(
            target,
            inspected,
            filesystems,
            options,
            supervisor,
        );
    }
    let before = inspected.assessment;
    let prepared = match prepare(target, &inspected, options, resume_at) {
        Ok(prepared) => prepared,
        Err(Refusal::Skip(reason)) => {
            return Outcome::Skipped {
                reason,
                before: Some(before),
            }
        }
        Err(Refusal::Fail(reason)) => {
            return Outcome::Failed {
                reason,
                before: Some(before),
                bytes_moved: 0,
            }
        }
    };
    let Some(prepared) = prepared else {
        return Outcome::WouldDefragment(before);
    };
    run(&inspected, &prepared, options, supervisor)
}

/// Why a file cannot be moved, from its flags and its filesystem.
pub fn refuse_unmovable(inspected: &Inspected) -> Result<(), SkipReason> {
    let (fs, flags) = (&inspected.fs, inspected.flags);
    let block_size = u64::from(fs.superblock.block_size);
    let checks = [
        (fs.read_only, SkipReason::ReadOnly),
        (fs.superblock.bigalloc, SkipReason::Bigalloc),
        (
            fs.data_journal || flags.journal_data(),
            SkipReason::DataJournal,
        ),
        (fs.dax || flags.dax(), SkipReason::Dax),
        (flags.immutable(), SkipReason::Immutable),
        (flags.append_only(), SkipReason::AppendOnly),
        (flags.encrypted() || flags.verity(), SkipReason::Encrypted),
        (flags.inline_data(), SkipReason::InlineData),
        (
            inspected.size < block_size,
            SkipReason::TooSmall {
                size: inspected.size,
            },
        ),
        (!flags.extent_mapped(), SkipReason::BlockMapped),
    ];
    if let Some((_, reason)) = checks.into_iter().find(|(refused, _)| *refused) {
        return Err(reason);
    }
    match inspected.map.problem {
        Some(MapProblem::DelayedAllocation) => Err(SkipReason::Busy(
            "it is being written right now (unallocated data after fdatasync)".into(),
        )),
        Some(MapProblem::Inline) => Err(SkipReason::InlineData),
        Some(MapProblem::UnknownLocation) => Err(SkipReason::Encrypted),
        None => Ok(()),
    }
}

/// A move ready to run: the file open for writing and a donor that is
/// known to be better.
struct Prepared {
    file: OwnedFd,
    donor: OwnedFd,
    ranges: Vec<BlockRange>,
    file_runs: u64,
    resume_at: u64,
}

/// Checks everything before the first kernel call that changes anything.
/// `Ok(None)` is a dry run that passed every check.
fn prepare(
    target: &Target,
    inspected: &Inspected,
    options: &MoveOptions,
    resume_at: u64,
) -> Result<Option<Prepared>, Refusal> {
    refuse_unmovable(inspected)?;
    if ext4::is_active_swapfile(inspected.dev, inspected.ino) {
        return Err(SkipReason::Swapfile.into());
    }
    if let Some(quiet) = options.quiet_period {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ago_secs = now.saturating_sub(u64::try_from(inspected.mtime).unwrap_or(0));
        if ago_secs < quiet.as_secs() {
            return Err(SkipReason::RecentlyWritten { ago_secs }.into());
        }
    }
    let before = &inspected.assessment;
    if resume_at == 0 && before.is_contiguous() {
        return Err(SkipReason::AlreadyContiguous {
            extents: before.extents,
            ideal: before.ideal_extents,
        }
        .into());
    }
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let eof_block = inspected.size.div_ceil(block_size);
    let ranges = from_block(
        &clip_to_eof(&inspected.map.data_ranges(), eof_block),
        resume_at,
    );
    let file_runs = inspected.map.physical_runs_in(&ranges);
    // A resumed job whose rest already lies in one piece gains nothing from
    // moving that rest alone: the file is done, or, where it is still in
    // pieces as a whole (the moved part here, the rest there), it starts
    // over from its first block.
    if resume_at > 0 && file_runs <= 1 {
        if before.is_contiguous() {
            return Err(SkipReason::AlreadyContiguous {
                extents: before.extents,
                ideal: before.ideal_extents,
            }
            .into());
        }
        return prepare(target, inspected, options, 0);
    }
    if ranges.is_empty() {
        return Err(SkipReason::AlreadyContiguous {
            extents: before.extents,
            ideal: before.ideal_extents,
        }
        .into());
    }
    let layout = DonorLayout::for_ranges(&ranges);
    let need = layout.allocated_blocks(&ranges) * block_size;
    check_free_space(inspected.file.as_fd(), need, options.reserve_percent)?;
    if options.dry_run {
        return Ok(None);
    }
    let file = open_for_writing(inspected)?;
    let build = || {
        build_donor(
            target,
            inspected,
            layout,
            &ranges,
            need,
            options.reserve_percent,
            // A resumed job most often follows a crash or a stop: the blocks
            // its last donor held are free only once the journal commits.
            resume_at > 0,
        )
    };
    let (mut donor, mut donor_runs) = build()?;
    // Blocks freed by a move only become free for the allocator once the
    // journal commits (a few seconds later): a move right after another one
    // (a resumed job, the next file) gets scattered space. When the donor is
    // far from ideal, commit and try once more, keeping the better one.
    // Only where two donors fit above the reserve; a failed second try
    // keeps the first.
    let room_for_two =
        check_free_space(inspected.file.as_fd(), need, options.reserve_percent).is_ok();
    if donor_runs > 1 && donor_runs > 2 * ideal_extents(&ranges) && room_for_two {
        ext4::sync_all(donor.as_fd())?;
        if let Ok((second, second_runs)) = build() {
            if second_runs < donor_runs {
                (donor, donor_runs) = (second, second_runs);
            }
        }
    }
    if donor_runs >= file_runs {
        return Err(SkipReason::NoContiguousFreeSpace {
            file_runs,
            donor_runs,
        }
        .into());
    }
    Ok(Some(Prepared {
        file,
        donor,
        ranges,
        file_runs,
        resume_at,
    }))
}

/// Creates a donor beside the file, allocated over `ranges`, and counts
/// its physical runs there.
fn build_donor(
    target: &Target,
    inspected: &Inspected,
    layout: DonorLayout,
    ranges: &[BlockRange],
    need: u64,
    reserve_percent: f64,
    commit_first: bool,
) -> Result<(OwnedFd, u64), Refusal> {
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let donor = ext4::create_donor(target.dir.as_fd())?;
    if commit_first {
        ext4::commit_journal(donor.as_fd())?;
    }
    layout
        .allocate(donor.as_fd(), ranges, block_size)
        .map_err(|e| match e {
            // Another writer took the space since the check: say how much is left.
            ext4::Error::NoSpace => {
                match check_free_space(inspected.file.as_fd(), need, reserve_percent) {
                    Err(refusal) => refusal,
                    Ok(()) => Refusal::Fail(FailReason::Kernel(ext4::Error::NoSpace)),
                }
            }
            other => Refusal::from(other),
        })?;
    let donor_map = ExtentMap::from_fiemap(&ext4::fiemap(donor.as_fd(), Flush::No)?, block_size);
    let donor_ranges = donor_map.data_ranges();
    if donor_ranges != ranges {
        return Err(Refusal::Fail(FailReason::DonorMismatch(format!(
            "asked for {} ranges, got {}",
            ranges.len(),
            donor_ranges.len()
        ))));
    }
    let runs = donor_map.physical_runs_in(ranges);
    Ok((donor, runs))
}

/// How the donor's blocks are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DonorLayout {
    /// One allocation per data range.
    PerRange,
    /// One allocation over the whole span, then the holes punched out:
    /// each piece of data lands where the file's logical layout says, so
    /// the file reads as one extent past its holes (filefrag counts it so).
    /// Only where holes are at most as large as the data.
    Span,
}

impl DonorLayout {
    fn for_ranges(ranges: &[BlockRange]) -> Self {
        let data: u64 = ranges.iter().map(|r| r.len).sum();
        match (ranges.first(), ranges.last()) {
            (Some(first), Some(last))
                if ranges.len() > 1 && last.end() - first.start <= 2 * data =>
            {
                DonorLayout::Span
            }
            _ => DonorLayout::PerRange,
        }
    }

    /// Blocks allocated at the most while the donor is built.
    fn allocated_blocks(self, ranges: &[BlockRange]) -> u64 {
        match (self, ranges.first(), ranges.last()) {
            (DonorLayout::Span, Some(first), Some(last)) => last.end() - first.start,
            _ => ranges.iter().map(|r| r.len).sum(),
        }
    }

    fn allocate(
        self,
        donor: BorrowedFd<'_>,
        ranges: &[BlockRange],
        block_size: u64,
    ) -> ext4::Result<()> {
        let bytes = |blocks: u64| blocks * block_size;
        match (self, ranges.first(), ranges.last()) {
            (DonorLayout::Span, Some(first), Some(last)) => {
                ext4::allocate(donor, bytes(first.start), bytes(last.end() - first.start))?;
                for pair in ranges.windows(2) {
                    ext4::punch_hole(
                        donor,
                        bytes(pair[0].end()),
                        bytes(pair[1].start - pair[0].end()),
                    )?;
                }
                Ok(())
            }
            _ => ranges
                .iter()
                .try_for_each(|r| ext4::allocate(donor, bytes(r.start), bytes(r.len))),
        }
    }
}

/// `ranges` from block `start` on.
fn from_block(ranges: &[BlockRange], start: u64) -> Vec<BlockRange> {
    ranges
        .iter()
        .filter(|r| r.end() > start)
        .map(|r| {
            let begin = r.start.max(start);
            BlockRange {
                start: begin,
                len: r.end() - begin,
            }
        })
        .collect()
}

fn check_free_space(fd: BorrowedFd<'_>, need: u64, reserve_percent: f64) -> Result<(), Refusal> {
    let free = ext4::free_space(fd)?;
    let reserve = (free.total_bytes as f64 * reserve_percent / 100.0) as u64;
    if free.available_bytes < need.saturating_add(reserve) {
        return Err(SkipReason::NotEnoughFreeSpace {
            need: Size(need),
            available: Size(free.available_bytes),
            reserve: Size(reserve),
        }
        .into());
    }
    Ok(())
}

fn open_for_writing(inspected: &Inspected) -> Result<OwnedFd, Refusal> {
    match ext4::reopen(inspected.pinned.as_fd(), Access::ReadWrite) {
        Ok(fd) => Ok(fd),
        Err(ext4::Error::TextBusy) if ext4::is_active_swapfile(inspected.dev, inspected.ino) => {
            Err(SkipReason::Swapfile.into())
        }
        Err(ext4::Error::TextBusy) => Err(SkipReason::Busy("it is being executed".into()).into()),
        Err(ext4::Error::PermissionDenied { .. }) if inspected.flags.immutable() => {
            Err(SkipReason::Immutable.into())
        }
        Err(other) => Err(other.into()),
    }
}

fn run(
    inspected: &Inspected,
    prepared: &Prepared,
    options: &MoveOptions,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let before = inspected.assessment;
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let chunk_blocks = plan::chunk_blocks(options.chunk_bytes, block_size);
    let chunks = plan::chunks(&prepared.ranges, chunk_blocks, prepared.resume_at);
    let total_bytes = chunks.iter().map(|c| c.len.get()).sum::<u64>() * block_size;
    let (file, donor) = (prepared.file.as_fd(), prepared.donor.as_fd());
    let mut cache = CacheKeeper::new(file, block_size);
    let mut moved_bytes = 0;
    let mut since_checkpoint = 0u64;
    let mut last_checkpoint = std::time::Instant::now();
    let failed = |reason: FailReason, moved_bytes| Outcome::Failed {
        reason,
        before: Some(before),
        bytes_moved: moved_bytes,
    };

    if let Some(first) = chunks.first() {
        cache.prepare(first);
    }
    for (index, chunk) in chunks.iter().enumerate() {
        let bytes = chunk.len.get() * block_size;
        if supervisor.before_chunk(bytes) == Control::Stop {
            cache.finish_all();
            // What was moved must be on disk before anyone resumes after it.
            if let Err(e) = commit(file, donor) {
                return failed(FailReason::Kernel(e), moved_bytes);
            }
            return Outcome::Interrupted {
                before,
                next_block: chunk.start,
                bytes_moved: moved_bytes,
            };
        }
        if let Some(next) = chunks.get(index + 1) {
            cache.prepare(next);
        }
        let result = move_chunk(file, donor, chunk, block_size);
        let moved_blocks = match &result {
            Ok(moved) => *moved,
            Err(failure) => failure.moved_blocks,
        };
        moved_bytes += moved_blocks.min(chunk.len.get()) * block_size;
        cache.moved(chunk);
        match result {
            Err(failure) => {
                cache.finish_all();
                return failed(FailReason::Kernel(failure.error), moved_bytes);
            }
            Ok(moved) if moved != chunk.len.get() => {
                cache.finish_all();
                return failed(
                    FailReason::ShortMove {
                        at: chunk.start,
                        asked: chunk.len.get(),
                        moved,
                    },
                    moved_bytes,
                );
            }
            Ok(_) => {}
        }
        // A cursor is only worth saving once the moves before it are
        // committed: a power cut reverts uncommitted moves, and a resume
        // after a reverted cursor would skip blocks that are back in place.
        since_checkpoint += bytes;
        let last = index + 1 == chunks.len();
        let due =
            since_checkpoint >= CHECKPOINT_BYTES || last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        let durable = if due || last {
            since_checkpoint = 0;
            last_checkpoint = std::time::Instant::now();
            match commit(file, donor) {
                Ok(()) => true,
                // The job is done only once it is all committed.
                Err(e) if last => {
                    cache.finish_all();
                    return failed(FailReason::Kernel(e), moved_bytes);
                }
                Err(_) => false,
            }
        } else {
            false
        };
        supervisor.after_chunk(&Progress {
            chunk_bytes: moved_blocks * block_size,
            moved_bytes,
            total_bytes,
            next_block: chunk.end(),
            offset_bytes: chunk.end() * block_size,
            durable,
        });
    }
    cache.finish_all();

    let after_map = match ext4::fiemap(file, Flush::No) {
        Ok(raw) => ExtentMap::from_fiemap(&raw, block_size),
        Err(e) => return failed(FailReason::Kernel(e), moved_bytes),
    };
    let after = Assessment::of(&after_map, inspected.size.max(before.size_bytes));
    let after_runs = after_map.physical_runs_in(&prepared.ranges);
    if after_runs >= prepared.file_runs {
        return failed(
            FailReason::NoImprovement {
                before: prepared.file_runs,
                after: after_runs,
            },
            moved_bytes,
        );
    }
    Outcome::Defragmented(Moved {
        before,
        after,
        bytes_moved: moved_bytes,
        converted: false,
    })
}

/// Makes the moves so far survive a power cut: the file's data written to
/// its new blocks, then the journal, with the extent swaps, committed.
fn commit(file: BorrowedFd<'_>, donor: BorrowedFd<'_>) -> ext4::Result<()> {
    ext4::sync_all(file)?;
    ext4::commit_journal(donor)
}

/// The file is committed (fsync) after this much is moved, or this much
/// time passed, whichever comes first: the most a crash can make a resumed
/// job redo.
const CHECKPOINT_BYTES: u64 = 64 << 20;
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a chunk is tried again when the kernel finds its pages busy
/// (a writer's pages under writeback): the condition passes in milliseconds.
const BUSY_RETRIES: u32 = 20;

/// Moves one chunk; when the kernel answers EBUSY, writes the chunk back
/// and tries the rest again, a few times, with a short backoff.
fn move_chunk(
    file: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    chunk: &Chunk,
    block_size: u64,
) -> Result<u64, ext4::MoveFailed> {
    let mut done = 0u64;
    let mut attempt = 0;
    loop {
        let remaining = chunk.len.get() - done;
        let Some(len) = std::num::NonZeroU64::new(remaining) else {
            return Ok(done);
        };
        match ext4::move_extents(file, donor, chunk.start + done, len) {
            Ok(moved) => return Ok(done + moved),
            Err(failure) if failure.error == ext4::Error::Busy && attempt < BUSY_RETRIES => {
                done += failure.moved_blocks.min(remaining);
                attempt += 1;
                let (offset, bytes) = (
                    (chunk.start + done) * block_size,
                    (chunk.len.get() - done) * block_size,
                );
                let _ = ext4::write_back(file, offset, bytes, Wait::Yes);
                std::thread::sleep(std::time::Duration::from_millis(
                    (20 * u64::from(attempt)).min(200),
                ));
            }
            Err(failure) => {
                return Err(ext4::MoveFailed {
                    moved_blocks: done + failure.moved_blocks,
                    error: failure.error,
                })
            }
        }
    }
}

/// The largest folio the page cache builds on x86-64 (a PMD): cache
/// windows are aligned to it, so no folio straddles a window's edge.
const FOLIO_WINDOW: u64 = 2 << 20;

/// Keeps the page cache as it was found, and keeps MOVE_EXT fast.
///
/// Before a chunk is moved, it notes which of its pages were resident and
/// reads the rest ahead (MOVE_EXT would otherwise read them one page at a
/// time); after the move it writes the chunk back and drops the pages that
/// were not resident before.
///
/// MOVE_EXT is also about fifty times slower over the large folios that
/// ordinary reads and writes leave in the cache than over the single pages
/// that fadvise(WILLNEED) reads in (measured on 6.18: 74 ms against 1.4 ms
/// per MiB). So the resident pages of each folio-aligned window are written
/// back, dropped and read in again before the window is moved; they are
/// resident again afterwards. Pages mapped by a process cannot be dropped
/// and are moved as they are: slower, never wrong.
struct CacheKeeper<'fd> {
    fd: BorrowedFd<'fd>,
    block_size: u64,
    /// What was resident in each window before anything was touched,
    /// oldest first. (Measuring again after a reshape would be wrong:
    /// mincore counts a page only once its read has completed.)
    snapshots: VecDeque<Residency>,
    /// Bytes below this offset have been snapshotted and reshaped.
    reshaped_until: u64,
    /// Chunks prepared or moved but not yet written back, oldest first,
    /// with what was resident before (None: unknown, so drop nothing) and
    /// whether they were moved.
    pending: VecDeque<(Chunk, Option<Residency>, bool)>,
}

impl<'fd> CacheKeeper<'fd> {
    fn new(fd: BorrowedFd<'fd>, block_size: u64) -> Self {
        CacheKeeper {
            fd,
            block_size,
            snapshots: VecDeque::new(),
            reshaped_until: 0,
            pending: VecDeque::new(),
        }
    }

    fn bytes(&self, chunk: &Chunk) -> (u64, u64) {
        (
            chunk.start * self.block_size,
            chunk.len.get() * self.block_size,
        )
    }

    fn prepare(&mut self, chunk: &Chunk) {
        let (offset, len) = self.bytes(chunk);
        self.reshape(offset, offset + len);
        let residency = self.resident_before(offset, len);
        // A hint: if it fails the move just reads the pages itself.
        let _ = ext4::read_ahead(self.fd, offset, len);
        self.pending.push_back((*chunk, residency, false));
    }

    /// Snapshots the windows holding `offset..end` that are not yet, and
    /// turns their resident large folios into single pages.
    fn reshape(&mut self, offset: u64, end: u64) {
        let start = self
            .reshaped_until
            .max(offset / FOLIO_WINDOW * FOLIO_WINDOW);
        let window_end = end.div_ceil(FOLIO_WINDOW) * FOLIO_WINDOW;
        if start >= window_end {
            return;
        }
        self.reshaped_until = window_end;
        let len = window_end - start;
        let before = match ext4::residency(self.fd, start, len) {
            Ok(before) => before,
            Err(e) => {
                tracing::debug!("mincore failed, page cache left as is: {e}");
                return;
            }
        };
        if before.resident_pages() > 0 && ext4::write_back(self.fd, start, len, Wait::Yes).is_ok() {
            let _ = ext4::drop_cached(self.fd, start, len);
            for (offset, length) in before.resident_ranges() {
                let _ = ext4::read_ahead(self.fd, offset, length);
            }
        }
        self.snapshots.push_back(before);
    }

    /// What the snapshots say was resident in `offset..offset+len`; None
    /// when some page was never snapshotted.
    fn resident_before(&self, offset: u64, len: u64) -> Option<Residency> {
        let page = ext4::page_size();
        let start = offset / page * page;
        let pages = (offset + len).div_ceil(page) - start / page;
        let resident = (0..pages)
            .map(|i| {
                let at = start + i * page;
                self.snapshots.iter().find_map(|s| s.at(at))
            })
            .collect::<Option<Vec<bool>>>()?;
        Some(Residency {
            start,
            page_size: page,
            resident,
        })
    }

    /// Forgets snapshots wholly below `offset`.
    fn forget_before(&mut self, offset: u64) {
        while self.snapshots.front().is_some_and(|s| s.end() <= offset) {
            self.snapshots.pop_front();
        }
    }

    /// `chunk` was moved: start its write-back, and finish the ones before.
    fn moved(&mut self, chunk: &Chunk) {
        let (offset, len) = self.bytes(chunk);
        let _ = ext4::write_back(self.fd, offset, len, Wait::No);
        if let Some(entry) = self.pending.iter_mut().find(|(c, _, _)| c == chunk) {
            entry.2 = true;
        }
        while self
            .pending
            .front()
            .is_some_and(|(c, _, moved)| *moved && c != chunk)
        {
            if let Some((c, residency, _)) = self.pending.pop_front() {
                self.settle(&c, residency.as_ref());
            }
        }
        if let Some((oldest, _, _)) = self.pending.front() {
            self.forget_before(oldest.start * self.block_size);
        }
    }

    fn finish_all(&mut self) {
        while let Some((chunk, residency, _)) = self.pending.pop_front() {
            self.settle(&chunk, residency.as_ref());
        }
    }

    fn settle(&self, chunk: &Chunk, residency: Option<&Residency>) {
        let (offset, len) = self.bytes(chunk);
        // Dirty pages cannot be dropped: wait for them to reach the disk.
        if let Err(e) = ext4::write_back(self.fd, offset, len, Wait::Yes) {
            tracing::debug!("write-back of {offset}+{len} failed: {e}");
            return;
        }
        for (start, length) in residency.map(Residency::absent_ranges).unwrap_or_default() {
            let _ = ext4::drop_cached(self.fd, start, length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_get_a_span_only_when_holes_are_small() {
        let r = |start, len| BlockRange { start, len };
        assert_eq!(DonorLayout::for_ranges(&[r(0, 10)]), DonorLayout::PerRange);
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10), r(15, 10)]),
            DonorLayout::Span
        );
        assert_eq!(
            DonorLayout::allocated_blocks(DonorLayout::Span, &[r(0, 10), r(15, 10)]),
            25
        );
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10), r(100, 10)]),
            DonorLayout::PerRange
        );
        assert_eq!(
            DonorLayout::allocated_blocks(DonorLayout::PerRange, &[r(0, 10), r(100, 10)]),
            20
        );
    }

    #[test]
    fn from_block_cuts_and_drops() {
        let r = [
            BlockRange { start: 0, len: 10 },
            BlockRange { start: 20, len: 10 },
        ];
        assert_eq!(from_block(&r, 0), r.to_vec());
        assert_eq!(
            from_block(&r, 5),
            vec![
                BlockRange { start: 5, len: 5 },
                BlockRange { start: 20, len: 10 }
            ]
        );
        assert_eq!(from_block(&r, 15), vec![BlockRange { start: 20, len: 10 }]);
        assert!(from_block(&r, 30).is_empty());
    }
}
