//! Defragmenting one file: check every precondition, fdatasync, build a
//! donor over exactly the file's data ranges (holes stay holes), make sure
//! it is really better, then MOVE_EXT chunk by chunk, checking `moved_len`
//! after every call, and leave the page cache as it was found.
//!
//! The mover never copies data itself and never holds a file open after it
//! returns. Pacing and stopping are the supervisor's business.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::assess::{
    clip_to_eof, ideal_extents, BlockRange, ExtentMap, MapProblem, MAX_EXTENT_BLOCKS,
};
use crate::ext4;
use crate::inspect::{inspect, Filesystems, Inspected, Refusal, Settle, Target};
use crate::outcome::{FailReason, Moved, Outcome, Size, SkipReason};
use crate::plan::{self, Chunk};
use crate::sys::{self, Access, Flush, Residency, Wait};

mod pass;
mod tail;
mod verdict;

use pass::{Halt, Pass};

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
    run(target, &inspected, &prepared, options, supervisor)
}

/// Refuses a file in use: an active swapfile, or one written within the
/// quiet period. Shared by a move and a conversion.
pub fn refuse_in_use(inspected: &Inspected, options: &MoveOptions) -> Result<(), SkipReason> {
    if sys::is_active_swapfile(inspected.dev, inspected.ino) {
        return Err(SkipReason::Swapfile);
    }
    if let Some(quiet) = options.quiet_period {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ago_secs = now.saturating_sub(u64::try_from(inspected.mtime).unwrap_or(0));
        if ago_secs < quiet.as_secs() {
            return Err(SkipReason::RecentlyWritten { ago_secs });
        }
    }
    Ok(())
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
    refuse_in_use(inspected, options)?;
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
    let need = layout.allocated_blocks(&ranges, None) * block_size;
    check_free_space(inspected.file.as_fd(), need, options.reserve_percent)?;
    if options.dry_run {
        return Ok(None);
    }
    let file = open_for_writing(inspected)?;
    // A resumed job most often follows a crash or a stop: the blocks its
    // last donor held are free only once the journal commits.
    let (donor, donor_runs) = best_donor(
        target,
        inspected,
        &ranges,
        need,
        options.reserve_percent,
        resume_at > 0,
    )?;
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

/// Builds a donor over `ranges` and, when it is far from ideal and from
/// what the free space allows, one more guided by the free space map;
/// keeps the better. Its physical runs with it.
fn best_donor(
    target: &Target,
    inspected: &Inspected,
    ranges: &[BlockRange],
    need: u64,
    reserve_percent: f64,
    commit_first: bool,
) -> Result<(OwnedFd, u64), Refusal> {
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let layout = DonorLayout::for_ranges(ranges);
    let build = |guided: bool| {
        build_donor(
            target,
            inspected,
            layout,
            ranges,
            need,
            reserve_percent,
            Build {
                // (A guided build follows a commit anyway.)
                commit_first: commit_first && !guided,
                guided,
            },
        )
    };
    let (mut donor, mut donor_runs) = build(false)?;
    // When the donor is far from ideal, and from what the free space allows,
    // let it go, commit, and make another one guided by the free space map
    // (the plain one comes first: it keeps what served well before). The
    // commit helps: blocks freed by a move (or by the first donor) only
    // become free for the allocator once the journal commits, so a move
    // right after another one (a resumed job, the next file) gets scattered
    // space. So does the map: see `FreeSpace`. The first is not kept beside
    // the second: it holds the best space, and the second would get what is
    // left.
    if donor_runs > 1
        && donor_runs > 2 * ideal_extents(ranges)
        && worth_another(inspected, donor.as_fd(), ranges, donor_runs)
    {
        let end = ranges.last().map_or(0, |r| r.end()) * block_size;
        let let_go = |donor: &OwnedFd| -> Result<(), Refusal> {
            sys::punch_hole(donor.as_fd(), 0, end)?;
            ext4::commit_journal(donor.as_fd())?;
            Ok(())
        };
        let first_runs = donor_runs;
        let_go(&donor)?;
        (donor, donor_runs) = match build(true) {
            Ok(second) => second,
            Err(_) => build(false)?,
        };
        // The map says what is free, not where fallocate will look: the
        // guided donor came out worse than the plain one in about one
        // resumed job in six (95 pieces against 29). Never keep a worse
        // one: make a plain one again.
        if donor_runs > first_runs {
            tracing::debug!(
                "the guided donor has {donor_runs} runs, the plain one had {first_runs}: a plain one again"
            );
            let_go(&donor)?;
            (donor, donor_runs) = build(false)?;
        }
    }
    Ok((donor, donor_runs))
}

/// Whether a donor for `ranges` in `runs` pieces is more scattered than
/// the free space allows (its own blocks counted free), so that another
/// one is worth making. Not only past twice that: on a 4 GiB image whose
/// free space allows 5, a plain donor of 9 was kept where the goal is 8.
/// Reading the free space map also helps the next one along (see
/// `FreeSpace`).
fn worth_another(
    inspected: &Inspected,
    donor: BorrowedFd<'_>,
    ranges: &[BlockRange],
    runs: u64,
) -> bool {
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let Ok(raw) = sys::fiemap(donor, Flush::No) else {
        return true;
    };
    let mut held: Vec<BlockRange> = ExtentMap::from_fiemap(&raw, block_size)
        .extents
        .iter()
        .map(|e| BlockRange {
            start: e.physical,
            len: e.len,
        })
        .collect();
    held.sort_by_key(|r| r.start);
    let data = ranges.iter().map(|r| r.len).sum();
    let allows = FreeSpace::read(inspected, data, &held).and_then(|f| f.fewest(data));
    allows.is_none_or(|allows| runs > allows.max(ideal_extents(ranges)))
}

/// How a donor is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Build {
    /// Commit the journal first, so that blocks freed a moment ago are free
    /// for the allocator.
    commit_first: bool,
    /// Read the free space map first and ask for each area the way the
    /// allocator serves it best.
    guided: bool,
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
    how: Build,
) -> Result<(OwnedFd, u64), Refusal> {
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let data: u64 = ranges.iter().map(|r| r.len).sum();
    let donor = sys::create_tmpfile(target.dir.as_fd())?;
    if how.commit_first {
        ext4::commit_journal(donor.as_fd())?;
    }
    // Read right before allocating: it also lets the allocator see all of
    // the free space (see `FreeSpace`).
    let mut free = how
        .guided
        .then(|| FreeSpace::read(inspected, data, &[]))
        .flatten();
    let geometry = Geometry::of(&inspected.fs.superblock);
    let padded_need = layout.allocated_blocks(ranges, Some(&geometry)) * block_size;
    let pad = check_free_space(inspected.file.as_fd(), padded_need, reserve_percent).is_ok();
    let calls = layout
        .allocate(donor.as_fd(), ranges, free.as_mut(), pad, block_size)
        .map_err(|e| match e {
            // Another writer took the space since the check: say how much is left.
            sys::Error::NoSpace => {
                match check_free_space(inspected.file.as_fd(), need, reserve_percent) {
                    Err(refusal) => refusal,
                    Ok(()) => Refusal::Fail(FailReason::Kernel(sys::Error::NoSpace)),
                }
            }
            other => Refusal::from(other),
        })?;
    let donor_map = ExtentMap::from_fiemap(&sys::fiemap(donor.as_fd(), Flush::No)?, block_size);
    let donor_ranges = donor_map.data_ranges();
    if donor_ranges != ranges {
        return Err(Refusal::Fail(FailReason::DonorMismatch(format!(
            "asked for {} ranges, got {}",
            ranges.len(),
            donor_ranges.len()
        ))));
    }
    let runs = donor_map.physical_runs_in(ranges);
    let allows = free.and_then(|f| f.fewest(data));
    tracing::debug!(
        "donor: {runs} runs in {calls} fallocate calls (ideal {}{})",
        ideal_extents(ranges),
        allows.map_or(String::new(), |n| format!(", the free space allows {n}")),
    );
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

    /// The areas allocated, before holes are punched out of a span.
    fn areas(self, ranges: &[BlockRange]) -> Vec<BlockRange> {
        match (self, ranges.first(), ranges.last()) {
            (DonorLayout::Span, Some(first), Some(last)) => vec![BlockRange {
                start: first.start,
                len: last.end() - first.start,
            }],
            _ => ranges.to_vec(),
        }
    }

    /// Blocks allocated at the most while the donor is built: the areas,
    /// and with `padding` the padding of one request at a time.
    fn allocated_blocks(self, ranges: &[BlockRange], padding: Option<&Geometry>) -> u64 {
        let areas = self.areas(ranges);
        let padding = padding.and_then(|g| areas.iter().map(|a| g.padded(a.len) - a.len).max());
        areas.iter().map(|a| a.len).sum::<u64>() + padding.unwrap_or(0)
    }

    /// Allocates the donor's blocks and returns how many fallocate calls
    /// it took. Knowing nothing of the free space, one call per area; else
    /// each area is asked for the way ext4 serves best (see
    /// `NO_NORMALIZE_MAX`), padded only if `pad`.
    fn allocate(
        self,
        donor: BorrowedFd<'_>,
        ranges: &[BlockRange],
        mut free: Option<&mut FreeSpace>,
        pad: bool,
        block_size: u64,
    ) -> sys::Result<usize> {
        let bytes = |blocks: u64| blocks * block_size;
        let mut calls = 0;
        let mut send = |r: &Request| {
            calls += 1;
            sys::allocate(donor, bytes(r.allocate.start), bytes(r.allocate.len))?;
            // At once, so that the padding of one request at a time is
            // held (statfs counts punched blocks free right away).
            match r.trim {
                Some(t) => sys::punch_hole(donor, bytes(t.start), bytes(t.len)),
                None => Ok(()),
            }
        };
        let areas = self.areas(ranges);
        for (i, area) in areas.iter().enumerate() {
            // Padding must not reach into the next area.
            let room = match areas.get(i + 1) {
                _ if !pad => area.len,
                Some(next) => next.start - area.start,
                None => u64::MAX,
            };
            let requests = match free.as_deref_mut().map(|f| (f.chunks.plan(*area, room), f)) {
                None => vec![Request::exact(*area)],
                Some((Plan::Requests(requests), _)) => requests,
                Some((Plan::Try, f)) => {
                    let mut at = area.start;
                    while at < area.end() {
                        let slice = BlockRange {
                            start: at,
                            len: (area.end() - at).min(NO_NORMALIZE_MAX),
                        };
                        send(&Request::exact(slice))?;
                        let raw = sys::fiemap(donor, Flush::No)?;
                        let runs =
                            ExtentMap::from_fiemap(&raw, block_size).physical_runs_in(&[slice]);
                        if runs > 2 * f.fewest(slice.len).unwrap_or(0).max(1) {
                            sys::punch_hole(donor, bytes(slice.start), bytes(slice.len))?;
                            // Commit, so that the blocks just punched out are
                            // free for the allocator again.
                            ext4::commit_journal(donor)?;
                            break;
                        }
                        at = slice.end();
                    }
                    let rest = BlockRange {
                        start: at,
                        len: area.end() - at,
                    };
                    match rest.len {
                        0 => Vec::new(),
                        _ => f
                            .chunks
                            .fallback(rest, room.saturating_sub(at - area.start)),
                    }
                }
            };
            for r in &requests {
                send(r)?;
            }
        }
        if self == DonorLayout::Span {
            for pair in ranges.windows(2) {
                sys::punch_hole(
                    donor,
                    bytes(pair[0].end()),
                    bytes(pair[1].start - pair[0].end()),
                )?;
            }
        }
        Ok(calls)
    }
}

/// How one area is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Requests(Vec<Request>),
    /// Plainly, in requests of at most `NO_NORMALIZE_MAX` blocks, each
    /// kept when it comes back in one piece or in at most twice as many as
    /// the free space allows (the allocator's own search serves well where
    /// free runs are few and long). At the first that does not, that one
    /// is punched out again and the rest asked for as
    /// `BuddyChunks::fallback` says.
    Try,
}

/// One fallocate call, and the padding to punch out right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    allocate: BlockRange,
    trim: Option<BlockRange>,
}

impl Request {
    fn exact(area: BlockRange) -> Self {
        Request {
            allocate: area,
            trim: None,
        }
    }

    /// `area` asked for as `len` blocks, the rest punched out after.
    fn padded(area: BlockRange, len: u64) -> Self {
        Request {
            allocate: BlockRange {
                start: area.start,
                len,
            },
            trim: (len > area.len).then(|| BlockRange {
                start: area.end(),
                len: len - area.len,
            }),
        }
    }
}

/// The longest fallocate ext4 serves without "normalizing" its requests
/// (EXT_UNWRITTEN_MAX_LEN). A longer one is served in 8 MiB windows, each
/// placed right after the one before when the space there is free: it
/// follows long free runs. A shorter one is served as one request: whole
/// from one aligned free chunk when it is a power of two up to
/// `Geometry::max_order` that the buddy allocator can meet, else by a
/// search that, in fragmented free space, settles for the best of the
/// first couple of hundred small pieces it finds (measured on 6.18: a
/// 20 MiB fallocate in 144 pieces where a 32 MiB chunk was free).
const NO_NORMALIZE_MAX: u64 = 32767;

/// What the free space holds right before a donor is made, read with
/// GETFSMAP. Reading it also changes where ext4 allocates: to answer, it
/// loads the buddy bitmap of every block group, which it otherwise does
/// only for groups it has searched since the mount, and for all of them
/// about a minute after it (its background prefetch). Until then its fast
/// searches skip the others and a large donor gets small pieces: on a
/// fresh mount 120 extents for 500 MiB where, once the map was read (or a
/// minute later), the same call got 14.
#[derive(Debug, Clone)]
struct FreeSpace {
    /// The largest free runs, cut at ext4's longest extent, longest first:
    /// just enough to hold the data. None when the free space cannot hold
    /// it or is too scattered to count.
    largest: Option<Vec<u64>>,
    chunks: BuddyChunks,
}

impl FreeSpace {
    /// The fewest extents any placement of `blocks` could have.
    fn fewest(&self, blocks: u64) -> Option<u64> {
        let mut held = 0;
        let mut count = 0;
        for &len in self.largest.as_ref()? {
            if held >= blocks {
                break;
            }
            held += len;
            count += 1;
        }
        (held >= blocks).then_some(count)
    }

    /// Reads the free space of the filesystem `inspected` lives on, with
    /// the blocks of `freeing` (sorted) counted free. None when GETFSMAP is
    /// not there (kernels before 4.12) or fails: the donor is then
    /// allocated as if nothing were known.
    fn read(inspected: &Inspected, data_blocks: u64, freeing: &[BlockRange]) -> Option<FreeSpace> {
        let sb = &inspected.fs.superblock;
        let block_size = u64::from(sb.block_size);
        let mut runs = Runs {
            chunks: BuddyChunks::new(Geometry::of(sb)),
            largest: LargestRuns::new(data_blocks),
            current: None,
        };
        let mut freeing = freeing.iter().peekable();
        let read = sys::free_extents(inspected.file.as_fd(), |e| {
            let start = e.physical / block_size;
            while let Some(r) = freeing.next_if(|r| r.start < start) {
                runs.add(*r);
            }
            runs.add(BlockRange {
                start,
                len: e.length / block_size,
            });
        });
        if let Err(e) = read {
            tracing::debug!("free space map not available, the donor is allocated blind: {e}");
            return None;
        }
        freeing.for_each(|r| runs.add(*r));
        Some(runs.finish())
    }
}

/// Free runs in disk order, joined where they touch (ext4 reports a run
/// crossing a block group edge in pieces), counted as they come.
struct Runs {
    chunks: BuddyChunks,
    largest: LargestRuns,
    current: Option<BlockRange>,
}

impl Runs {
    fn add(&mut self, r: BlockRange) {
        match self.current.as_mut() {
            Some(current) if current.end() == r.start => current.len += r.len,
            _ => {
                if let Some(done) = self.current.replace(r) {
                    self.count(done);
                }
            }
        }
    }

    fn count(&mut self, run: BlockRange) {
        self.chunks.add_run(run);
        self.largest.add(run.len);
    }

    fn finish(mut self) -> FreeSpace {
        if let Some(done) = self.current.take() {
            self.count(done);
        }
        FreeSpace {
            largest: self.largest.into_longest_first(),
            chunks: self.chunks,
        }
    }
}

/// The block group layout, as the allocator's buddy bitmaps see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// The first block of group 0 (1 on filesystems of 1 KiB blocks).
    first_block: u64,
    blocks_per_group: u64,
    groups_per_flex: u64,
    /// The largest power-of-two request (2^order blocks) the buddy
    /// allocator serves: 2^(block bits + 1), 32 MiB with 4 KiB blocks.
    max_order: u32,
    /// Requests are not cut in pieces smaller than 1 MiB (2^order blocks)
    /// unless what is left is that small.
    min_piece_order: u32,
    /// Whether the windows of a normalized request (8 MiB) are power-of-two
    /// requests the buddy allocator serves whole: not with 1 KiB blocks,
    /// whose 8 MiB windows are searched for like any odd size.
    windows_fit: bool,
    /// The order of those windows (2^order blocks).
    window_order: u32,
}

impl Geometry {
    fn of(sb: &ext4::Superblock) -> Geometry {
        let block_bits = sb.block_size.max(2).ilog2();
        let blocks_per_group = u64::from(sb.blocks_per_group).max(1);
        let max_order = block_bits + 1;
        let window = ((8u64 << 20) >> block_bits).min(blocks_per_group);
        Geometry {
            first_block: u64::from(sb.block_size == 1024),
            blocks_per_group,
            groups_per_flex: u64::from(sb.groups_per_flex.unwrap_or(1)),
            max_order,
            min_piece_order: 20u32.saturating_sub(block_bits),
            windows_fit: window <= 1 << max_order,
            window_order: window.ilog2(),
        }
    }

    /// The largest request one free chunk serves whole.
    fn largest_chunk(&self) -> u64 {
        (1u64 << self.max_order).min(NO_NORMALIZE_MAX)
    }

    /// What an area of `len` blocks is best asked for as, when the free
    /// space allows: the next power of two when one free chunk can serve
    /// that, else (where normalized windows serve well) one block past
    /// `NO_NORMALIZE_MAX`, else as it is.
    fn padded(&self, len: u64) -> u64 {
        match len {
            _ if len > NO_NORMALIZE_MAX => len,
            _ if len.next_power_of_two() <= self.largest_chunk() => len.next_power_of_two(),
            _ if self.windows_fit => NO_NORMALIZE_MAX + 1,
            _ => len,
        }
    }

    /// Whether the allocator takes power-of-two data requests from
    /// `group`: it keeps the first group of each flex group (of 4 or more)
    /// for metadata.
    fn serves_data(&self, group: u64) -> bool {
        self.groups_per_flex < 4 || !group.is_multiple_of(self.groups_per_flex)
    }
}

/// The free aligned chunks (2^order blocks, aligned to their size within
/// their block group) of the groups that serve data, counted by order:
/// what ext4's buddy allocator hands out whole to a power-of-two request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuddyChunks {
    geometry: Geometry,
    by_order: Vec<u64>,
}

impl BuddyChunks {
    fn new(geometry: Geometry) -> Self {
        BuddyChunks {
            geometry,
            by_order: vec![0; geometry.max_order as usize + 1],
        }
    }

    /// Counts the chunks of a free run, cut at block group edges.
    fn add_run(&mut self, run: BlockRange) {
        let g = self.geometry;
        let mut at = run.start.max(g.first_block);
        while at < run.end() {
            let group = (at - g.first_block) / g.blocks_per_group;
            let group_start = g.first_block + group * g.blocks_per_group;
            let end = run.end().min(group_start + g.blocks_per_group);
            let offset = at - group_start;
            let order = offset
                .trailing_zeros()
                .min((end - at).ilog2())
                .min(g.max_order);
            if g.serves_data(group) {
                self.by_order[order as usize] += 1;
            }
            at += 1 << order;
        }
    }

    /// How to ask for `area`, which has `room` blocks from its start
    /// before the next area: padded to a power of two when a free chunk
    /// can serve that whole; else plainly first (see `Plan::Try`), except
    /// with 1 KiB blocks, where nothing was seen to serve a large area
    /// better than one call.
    fn plan(&mut self, area: BlockRange, room: u64) -> Plan {
        let g = self.geometry;
        let padded = g.padded(area.len);
        if area.len < 2 {
            return Plan::Requests(vec![Request::exact(area)]);
        }
        let chunk = padded.is_power_of_two() && padded <= g.largest_chunk();
        if chunk && padded <= room && self.has_chunk(padded.ilog2()) {
            self.take(padded.ilog2());
            return Plan::Requests(vec![Request::padded(area, padded)]);
        }
        if area.len <= g.largest_chunk() || g.windows_fit {
            return Plan::Try;
        }
        Plan::Requests(vec![Request::exact(area)])
    }

    /// How to ask for what is left of an area when a plain request for it
    /// came back in pieces: in normalized windows (padded past
    /// `NO_NORMALIZE_MAX` if need be) when it is larger than a chunk and
    /// they serve well, else in pieces. Pieces too where no free chunk holds
    /// a whole window: the windows then come back in scraps (measured on
    /// 6.18, free space in runs just under 8 MiB: 500 MiB in 579 pieces,
    /// where 4 MiB chunks, one to a run, make about 125).
    fn fallback(&mut self, area: BlockRange, room: u64) -> Vec<Request> {
        let g = self.geometry;
        let normalized = NO_NORMALIZE_MAX + 1;
        if area.len > NO_NORMALIZE_MAX {
            if g.windows_fit && !self.has_chunk(g.window_order) {
                return self.pieces(area).into_iter().map(Request::exact).collect();
            }
            return vec![Request::exact(area)];
        }
        if area.len > g.largest_chunk() && g.windows_fit && normalized <= room {
            return vec![Request::padded(area, normalized)];
        }
        self.pieces(area).into_iter().map(Request::exact).collect()
    }

    fn has_chunk(&self, order: u32) -> bool {
        self.by_order
            .get(order as usize..)
            .is_some_and(|larger| larger.iter().any(|&n| n > 0))
    }

    /// Cuts `area` into requests, largest first: each a power of two for
    /// which a free chunk at least as large remains (then counted as
    /// taken). What is left when only chunks much smaller than it remain
    /// goes in one request: the allocator's own search takes whole free
    /// runs, where chunks would cut each run in several pieces.
    fn pieces(&mut self, area: BlockRange) -> Vec<BlockRange> {
        let mut pieces = Vec::new();
        let mut at = area.start;
        while at < area.end() {
            let left = area.end() - at;
            let wanted = left.ilog2();
            let order = match self.by_order.iter().rposition(|&n| n > 0) {
                // The allocator serves requests of 2 blocks and more so.
                Some(largest) if wanted >= 1 => (largest as u32).min(wanted),
                _ => 0,
            };
            if order == 0 || (order < wanted && order < self.geometry.min_piece_order) {
                pieces.push(BlockRange {
                    start: at,
                    len: left,
                });
                break;
            }
            self.take(order);
            pieces.push(BlockRange {
                start: at,
                len: 1 << order,
            });
            at += 1 << order;
        }
        pieces
    }

    /// Takes a chunk of `order` out of the smallest free chunk that holds
    /// it, as the buddy allocator does: the rest of that chunk splits into
    /// one chunk of each order in between.
    fn take(&mut self, order: u32) {
        let from = order as usize;
        if let Some(found) = (from..self.by_order.len()).find(|&o| self.by_order[o] > 0) {
            self.by_order[found] -= 1;
            for o in from..found {
                self.by_order[o] += 1;
            }
        }
    }
}

/// The largest free runs, each cut at ext4's longest extent, just enough
/// of them to hold `need` blocks: their number is the fewest extents any
/// placement of that many blocks could have.
#[derive(Debug, Clone)]
struct LargestRuns {
    need: u64,
    /// Lengths, smallest on top.
    held: std::collections::BinaryHeap<std::cmp::Reverse<u64>>,
    total: u64,
    /// More than LIMIT runs would be needed.
    too_many: bool,
}

impl LargestRuns {
    /// Past this many runs the count stops being useful (and its memory
    /// bounded): the free space is just too scattered.
    const LIMIT: usize = 1 << 16;

    fn new(need: u64) -> Self {
        LargestRuns {
            need,
            held: std::collections::BinaryHeap::new(),
            total: 0,
            too_many: false,
        }
    }

    fn add(&mut self, len: u64) {
        // More whole pieces than would hold `need` never count.
        let whole = (len / MAX_EXTENT_BLOCKS).min(self.need.div_ceil(MAX_EXTENT_BLOCKS));
        let pieces = std::iter::repeat_n(MAX_EXTENT_BLOCKS, whole as usize)
            .chain(Some(len % MAX_EXTENT_BLOCKS).filter(|&rest| rest > 0));
        for piece in pieces {
            self.held.push(std::cmp::Reverse(piece));
            self.total += piece;
            while let Some(&std::cmp::Reverse(smallest)) = self.held.peek() {
                let over_limit = self.held.len() > Self::LIMIT;
                if self.total - smallest < self.need && !over_limit {
                    break;
                }
                self.too_many |= over_limit && self.total - smallest < self.need;
                self.held.pop();
                self.total -= smallest;
            }
        }
    }

    fn into_longest_first(self) -> Option<Vec<u64>> {
        if self.total < self.need || self.too_many {
            return None;
        }
        let mut runs: Vec<u64> = self.held.into_iter().map(|r| r.0).collect();
        runs.sort_unstable_by(|a, b| b.cmp(a));
        Some(runs)
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
    let free = sys::free_space(fd)?;
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
    match sys::reopen(inspected.pinned.as_fd(), Access::ReadWrite) {
        Ok(fd) => Ok(fd),
        Err(sys::Error::TextBusy) if sys::is_active_swapfile(inspected.dev, inspected.ino) => {
            Err(SkipReason::Swapfile.into())
        }
        Err(sys::Error::TextBusy) => Err(SkipReason::Busy("it is being executed".into()).into()),
        Err(sys::Error::PermissionDenied { .. }) if inspected.flags.immutable() => {
            Err(SkipReason::Immutable.into())
        }
        Err(other) => Err(other.into()),
    }
}

fn run(
    target: &Target,
    inspected: &Inspected,
    prepared: &Prepared,
    options: &MoveOptions,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let before = inspected.assessment;
    let block_size = u64::from(inspected.fs.superblock.block_size);
    let chunk_blocks = plan::chunk_blocks(options.chunk_bytes, block_size);
    let chunks = plan::chunks(&prepared.ranges, chunk_blocks, prepared.resume_at);
    let file = prepared.file.as_fd();
    let mut pass = Pass::new(file, block_size);
    let halted = |halt: Halt, moved_bytes| match halt {
        Halt::Stopped { next_block } => Outcome::Interrupted {
            before,
            next_block,
            bytes_moved: moved_bytes,
        },
        Halt::Failed(reason) => Outcome::Failed {
            reason,
            before: Some(before),
            bytes_moved: moved_bytes,
        },
    };
    if let Err(halt) = pass.move_chunks(prepared.donor.as_fd(), &chunks, supervisor) {
        return halted(halt, pass.moved_bytes);
    }
    // What a writer appended meanwhile lies past the planned end: move it
    // too, or the whole file may end worse than it started.
    let planned_end = inspected.size.div_ceil(block_size);
    let tail = tail::Tail {
        target,
        inspected,
        options,
        chunk_blocks,
    };
    if let Err(halt) = tail.follow(&mut pass, planned_end, supervisor) {
        return halted(halt, pass.moved_bytes);
    }

    let measured = match verdict::measure(file, block_size) {
        Ok(measured) => measured,
        Err(e) => return halted(Halt::Failed(FailReason::Kernel(e)), pass.moved_bytes),
    };
    let judged = verdict::judge(&verdict::Layouts {
        before: &before,
        after: &measured.assessment,
        planned_before: prepared.file_runs,
        planned_after: measured.map.physical_runs_in(&prepared.ranges),
    });
    match judged {
        Ok(()) => Outcome::Defragmented(Moved {
            before,
            after: measured.assessment,
            bytes_moved: pass.moved_bytes,
            converted: false,
        }),
        Err(reason) => halted(Halt::Failed(reason), pass.moved_bytes),
    }
}

/// Logs (at debug) a step that took long enough for a writer beside it to
/// notice: what to look at when a workload feels the mover.
fn note_if_slow(what: &str, block: u64, started: std::time::Instant) {
    let took = started.elapsed();
    if took >= SLOW_STEP {
        tracing::debug!("{what} {block} took {} ms", took.as_millis());
    }
}

const SLOW_STEP: std::time::Duration = std::time::Duration::from_millis(20);

/// Makes the moves so far survive a power cut: the file's data written to
/// its new blocks, then the journal, with the extent swaps, committed.
fn commit(file: BorrowedFd<'_>, donor: BorrowedFd<'_>) -> sys::Result<()> {
    sys::sync_all(file)?;
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
            Err(failure) if failure.error == sys::Error::Busy && attempt < BUSY_RETRIES => {
                done += failure.moved_blocks.min(remaining);
                attempt += 1;
                let (offset, bytes) = (
                    (chunk.start + done) * block_size,
                    (chunk.len.get() - done) * block_size,
                );
                let _ = sys::write_back(file, offset, bytes, Wait::Yes);
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
        let _ = sys::read_ahead(self.fd, offset, len);
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
        let before = match sys::residency(self.fd, start, len) {
            Ok(before) => before,
            Err(e) => {
                tracing::debug!("mincore failed, page cache left as is: {e}");
                return;
            }
        };
        if before.resident_pages() > 0 && sys::write_back(self.fd, start, len, Wait::Yes).is_ok() {
            let _ = sys::drop_cached(self.fd, start, len);
            for (offset, length) in before.resident_ranges() {
                let _ = sys::read_ahead(self.fd, offset, length);
            }
        }
        self.snapshots.push_back(before);
    }

    /// What the snapshots say was resident in `offset..offset+len`; None
    /// when some page was never snapshotted.
    fn resident_before(&self, offset: u64, len: u64) -> Option<Residency> {
        let page = sys::page_size();
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
        let _ = sys::write_back(self.fd, offset, len, Wait::No);
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
        if let Err(e) = sys::write_back(self.fd, offset, len, Wait::Yes) {
            tracing::debug!("write-back of {offset}+{len} failed: {e}");
            return;
        }
        for (start, length) in residency.map(Residency::absent_ranges).unwrap_or_default() {
            let _ = sys::drop_cached(self.fd, start, length);
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
            DonorLayout::allocated_blocks(DonorLayout::Span, &[r(0, 10), r(15, 10)], None),
            25
        );
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10), r(100, 10)]),
            DonorLayout::PerRange
        );
        assert_eq!(
            DonorLayout::allocated_blocks(DonorLayout::PerRange, &[r(0, 10), r(100, 10)], None),
            20
        );
    }

    fn r(start: u64, len: u64) -> BlockRange {
        BlockRange { start, len }
    }

    /// 4 KiB blocks, 32768 per group, 16 groups per flex group.
    fn superblock() -> ext4::Superblock {
        ext4::Superblock {
            uuid: ext4::FsUuid([0; 16]),
            block_size: 4096,
            blocks_per_group: 32768,
            groups_per_flex: Some(16),
            has_extents: true,
            bigalloc: false,
            inline_data: false,
            encryption: false,
        }
    }

    fn geometry() -> Geometry {
        Geometry::of(&superblock())
    }

    /// Chunks with `counts[order]` free chunks of each order.
    fn chunks(counts: &[(u32, u64)]) -> BuddyChunks {
        let mut c = BuddyChunks::new(geometry());
        for &(order, n) in counts {
            c.by_order[order as usize] = n;
        }
        c
    }

    #[test]
    fn geometry_follows_the_block_size() {
        let g = geometry();
        assert_eq!((g.first_block, g.max_order, g.min_piece_order), (0, 13, 8));
        assert!(g.windows_fit);
        assert!(!g.serves_data(0) && g.serves_data(1) && !g.serves_data(16));
        assert_eq!(g.padded(1), 1);
        assert_eq!(g.padded(5000), 8192);
        assert_eq!(g.padded(8192), 8192);
        assert_eq!(g.padded(8193), 32768);
        assert_eq!(g.padded(32767), 32768);
        assert_eq!(g.padded(40000), 40000);
    }

    #[test]
    fn free_runs_count_as_aligned_chunks_of_the_groups_that_serve_data() {
        let mut c = BuddyChunks::new(geometry());
        c.add_run(r(32768 + 100, 1000));
        let expected = [0, 0, 2, 2, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0];
        assert_eq!(c.by_order, expected);
        // Group 0 and 16 keep metadata: not counted.
        c.add_run(r(0, 32768));
        c.add_run(r(16 * 32768, 8192));
        assert_eq!(c.by_order, expected);
        // Cut at the group edge: 8192 on each side.
        c.add_run(r(2 * 32768 - 8192, 16384));
        assert_eq!(c.by_order[13], 2);
    }

    #[test]
    fn taking_a_chunk_splits_the_smallest_that_holds_it() {
        let mut c = chunks(&[(13, 1), (10, 1)]);
        c.take(11);
        assert_eq!(c.by_order[10..], [1, 1, 1, 0]);
        c.take(10);
        assert_eq!(c.by_order[10..], [0, 1, 1, 0]);
    }

    #[test]
    fn pieces_are_powers_of_two_that_free_chunks_can_serve() {
        let mut c = chunks(&[(13, 1), (11, 1), (9, 4)]);
        assert_eq!(
            c.pieces(r(100, 12000)),
            [8192, 2048, 512, 512, 512, 128, 64, 32]
                .iter()
                .scan(100, |at, &len| {
                    *at += len;
                    Some(r(*at - len, len))
                })
                .collect::<Vec<_>>()
        );
        // Only small chunks left: the rest in one request.
        let mut c = chunks(&[(4, 100)]);
        assert_eq!(c.pieces(r(0, 5000)), vec![r(0, 5000)]);
        // ... unless the rest is that small itself.
        assert_eq!(c.pieces(r(0, 20)), vec![r(0, 16), r(16, 4)]);
        assert_eq!(c.pieces(r(0, 1)), vec![r(0, 1)]);
    }

    #[test]
    fn areas_are_asked_for_the_way_ext4_serves_best() {
        let pad = |area, len| Plan::Requests(vec![Request::padded(area, len)]);
        let exact = |area| Plan::Requests(vec![Request::exact(area)]);
        // A power of two a free chunk can serve, then the rest punched.
        let mut c = chunks(&[(13, 1)]);
        assert_eq!(c.plan(r(0, 5000), u64::MAX), pad(r(0, 5000), 8192));
        assert_eq!(Request::padded(r(0, 5000), 8192).trim, Some(r(5000, 3192)));
        // That chunk is taken now: plainly first.
        assert_eq!(c.plan(r(0, 5000), u64::MAX), Plan::Try);
        // Too small to matter: as it is.
        assert_eq!(c.plan(r(7, 1), 0), exact(r(7, 1)));
        // Large: plainly first, then normalized.
        assert_eq!(c.plan(r(0, 40000), 0), Plan::Try);
        assert_eq!(
            c.fallback(r(0, 40000), 0),
            vec![Request::exact(r(0, 40000))]
        );
        // ... unless no free chunk holds a normalized window (8 MiB): then
        // in the largest chunks there are.
        let mut scraps = chunks(&[(10, 50), (9, 50)]);
        let mut expected: Vec<Request> =
            (0..39).map(|i| Request::exact(r(i * 1024, 1024))).collect();
        expected.push(Request::exact(r(39 * 1024, 64)));
        assert_eq!(scraps.fallback(r(0, 40000), 0), expected);
        assert_eq!(scraps.by_order[10], 11);
        // Not with 1 KiB blocks.
        let mut sb = ext4::Superblock {
            block_size: 1024,
            blocks_per_group: 8192,
            ..superblock()
        };
        let mut small = BuddyChunks::new(Geometry::of(&sb));
        assert!(!small.geometry.windows_fit);
        assert_eq!(small.plan(r(0, 40000), 0), exact(r(0, 40000)));
        sb.block_size = 2048;
        assert!(Geometry::of(&sb).windows_fit);
        // No room to pad before the next area: plainly first.
        assert_eq!(chunks(&[(13, 1)]).plan(r(0, 5000), 6000), Plan::Try);
        // Past the largest chunk: plainly, then padded past what ext4
        // serves unnormalized, or in pieces where that does not fit.
        let mut c = chunks(&[(13, 1), (5, 1)]);
        assert_eq!(c.plan(r(0, 9000), u64::MAX), Plan::Try);
        assert_eq!(
            c.fallback(r(0, 9000), u64::MAX),
            vec![Request::padded(r(0, 9000), 32768)]
        );
        assert_eq!(
            c.fallback(r(0, 9000), 9000),
            vec![Request::exact(r(0, 8192)), Request::exact(r(8192, 808))]
        );
        // The most ever allocated: the areas and one padding.
        let ranges = [r(0, 5000), r(6000, 100)];
        assert_eq!(
            DonorLayout::PerRange.allocated_blocks(&ranges, Some(&geometry())),
            5100 + 3192
        );
        assert_eq!(DonorLayout::PerRange.allocated_blocks(&ranges, None), 5100);
    }

    #[test]
    fn the_largest_runs_count_the_fewest_extents_possible() {
        let fewest = |need, runs: &[u64]| {
            let mut l = LargestRuns::new(need);
            runs.iter().for_each(|&len| l.add(len));
            let free = FreeSpace {
                largest: l.into_longest_first(),
                chunks: chunks(&[]),
            };
            free.fewest(need)
        };
        assert_eq!(fewest(100, &[30, 50, 10, 40, 70]), Some(2));
        assert_eq!(fewest(100, &[10, 10, 100]), Some(1));
        assert_eq!(fewest(100, &[60, 39]), None);
        // Cut at ext4's longest extent.
        assert_eq!(fewest(70000, &[100_000]), Some(3));
        assert_eq!(fewest(65536, &[1 << 40]), Some(2));
        // And for part of the data.
        let mut l = LargestRuns::new(120);
        [70, 10, 50].iter().for_each(|&len| l.add(len));
        let free = FreeSpace {
            largest: l.into_longest_first(),
            chunks: chunks(&[]),
        };
        assert_eq!(
            (free.fewest(60), free.fewest(120), free.fewest(121)),
            (Some(1), Some(2), None)
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
