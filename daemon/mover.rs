//! Defragmenting one file, the same way on every filesystem: check every
//! precondition (`crate::eligibility`), fdatasync, get the file's backend
//! ready to relocate exactly its data ranges (holes stay holes), make sure
//! the new place is really better, then relocate chunk by chunk, checking
//! how much moved after every call, keep the page cache as it was found
//! (`cache`), checkpoint (`pass`), and verify the result (`verdict`).
//! How a range is relocated and made durable is the backend's
//! (`crate::backend`).
//!
//! The mover never copies data itself and never holds a file open after it
//! returns. Pacing and stopping are the supervisor's business.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::assess::{clip_to_eof, Assessment, BlockRange};
use crate::backend::{Inspected, Relocation};
use crate::eligibility::{check_free_space, refuse_in_use, refuse_unmovable};
use crate::inspect::{inspect, Filesystems, Settle};
use crate::outcome::{Moved, Outcome, Refusal, SkipReason};
use crate::plan;
use crate::sys::{self, Access};
use crate::target::Target;

mod cache;
mod convert_first;
mod pass;
mod swap;
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
    /// Swap files whole with SWAPEXT on XFS without rmapbt, whose crash
    /// recovery is broken on this kernel (off by default).
    pub xfs_swapext_without_rmapbt: bool,
    /// How btrfs files are defragmented (extent threshold, nodatacow).
    pub btrfs: crate::backend::btrfs::Policy,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            reserve_percent: DEFAULT_RESERVE_PERCENT,
            dry_run: false,
            quiet_period: None,
            convert_block_mapped: false,
            xfs_swapext_without_rmapbt: false,
            btrfs: crate::backend::btrfs::Policy::default(),
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
    /// Called once the file is judged worth moving, before the move's
    /// first I/O of its own (the donor's allocation): may sleep until the
    /// disk is quiet, or ask to stop. Nothing is said of the move yet.
    fn before_start(&mut self) -> Control {
        Control::Continue
    }
    /// Called before each chunk of `bytes`; may sleep, or ask to stop.
    fn before_chunk(&mut self, bytes: u64) -> Control;
    /// Called after each chunk.
    fn after_chunk(&mut self, progress: &Progress);
    /// Asked before each chunk of `bytes`: whether
    /// [`before_chunk`](Self::before_chunk) will listen to the disk, so
    /// that the move's own write-back must have landed first (see
    /// `crate::ramp`).
    fn wants_quiet_disk(&mut self, _bytes: u64) -> bool {
        false
    }
    /// Called after each commit of the moves with how long it took: a
    /// slow one means the disk queued it behind others (see `crate::ramp`).
    fn committed(&mut self, _took: std::time::Duration) {}
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
    filesystems.set_btrfs_policy(options.btrfs);
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
        return convert_first::convert_then_defragment(
            target,
            inspected,
            filesystems,
            options,
            supervisor,
        );
    }
    let before = inspected.assessment;
    let prepared = match prepare(target, &inspected, options, resume_at, supervisor) {
        Ok(Prepare::Ready(prepared)) => prepared,
        Ok(Prepare::DryRun) => return Outcome::WouldDefragment(before),
        Ok(Prepare::Stopped) => {
            return Outcome::Interrupted {
                before,
                next_block: resume_at,
                bytes_moved: 0,
            }
        }
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
    if prepared.relocation.swaps_whole_file() {
        return run_swap(&inspected, prepared, options, supervisor);
    }
    run(target, &inspected, prepared, options, supervisor)
}

/// A move ready to run: the file open for writing and a relocation (a
/// donor, on ext4) known to be better.
struct Prepared {
    file: OwnedFd,
    relocation: Relocation,
    ranges: Vec<BlockRange>,
    file_runs: u64,
    resume_at: u64,
}

/// What became of preparing a move that nothing refused.
enum Prepare {
    Ready(Prepared),
    /// A dry run that passed every check.
    DryRun,
    /// The supervisor stopped it before its first I/O.
    Stopped,
}

/// Checks everything before the first kernel call that changes anything,
/// then lets the supervisor wait for a quiet disk, then makes the donor.
fn prepare(
    target: &Target,
    inspected: &Inspected,
    options: &MoveOptions,
    resume_at: u64,
    supervisor: &mut dyn Supervisor,
) -> Result<Prepare, Refusal> {
    refuse_unmovable(inspected)?;
    inspected
        .backend
        .refuse_risky(&inspected.fs, options.xfs_swapext_without_rmapbt)?;
    refuse_in_use(inspected, options.quiet_period)?;
    // Where the file is swapped whole, nothing of a stopped move is in it:
    // it starts over.
    let resume_at = if inspected.backend.resumes_mid_file(&inspected.fs) {
        resume_at
    } else {
        0
    };
    let before = &inspected.assessment;
    if resume_at == 0 && before.is_contiguous() {
        return Err(SkipReason::AlreadyContiguous {
            extents: before.extents,
            ideal: before.ideal_extents,
        }
        .into());
    }
    let block_size = inspected.fs.block_size;
    let eof_block = inspected.size.div_ceil(block_size);
    let ranges = from_block(
        &clip_to_eof(&inspected.map.data_ranges(), eof_block),
        resume_at,
    );
    // What the backend relocates of them (btrfs: the unshared ranges worth
    // it); the runs and the verdict are counted over those.
    let ranges = inspected
        .backend
        .narrow_ranges(inspected, ranges, resume_at)?;
    let file_runs = inspected.map.extent_count_in(&ranges);
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
        return prepare(target, inspected, options, 0, supervisor);
    }
    if ranges.is_empty() {
        return Err(SkipReason::AlreadyContiguous {
            extents: before.extents,
            ideal: before.ideal_extents,
        }
        .into());
    }
    let backend = inspected.backend;
    let need = backend.space_needed(&ranges, block_size);
    check_free_space(inspected.file.as_fd(), need, options.reserve_percent)?;
    if options.dry_run {
        return Ok(Prepare::DryRun);
    }
    // The donor's allocation is the move's first I/O: not while others
    // use the disk.
    if supervisor.before_start() == Control::Stop {
        return Ok(Prepare::Stopped);
    }
    let file = open_for_writing(inspected)?;
    // A resumed job most often follows a crash or a stop: the blocks its
    // last donor held are free only once the journal commits.
    let relocation = backend.relocation(
        target,
        inspected,
        &ranges,
        options.reserve_percent,
        resume_at > 0,
    )?;
    let donor_runs = relocation.extents();
    if donor_runs >= file_runs {
        return Err(SkipReason::NoContiguousFreeSpace {
            file_runs,
            donor_runs,
        }
        .into());
    }
    Ok(Prepare::Ready(Prepared {
        file,
        relocation,
        ranges,
        file_runs,
        resume_at,
    }))
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
    mut prepared: Prepared,
    options: &MoveOptions,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let before = inspected.assessment;
    let block_size = inspected.fs.block_size;
    let chunk_bytes = prepared.relocation.chunk_bytes(options.chunk_bytes);
    let chunk_blocks = plan::chunk_blocks(chunk_bytes, block_size);
    let chunks = prepared
        .relocation
        .chunks(&prepared.ranges, chunk_blocks, prepared.resume_at);
    let file = prepared.file.as_fd();
    let mut pass = Pass::new(file, block_size);
    if let Err(halt) = pass.move_chunks(&mut prepared.relocation, &chunks, supervisor) {
        return halted(before, halt, pass.moved_bytes);
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
        return halted(before, halt, pass.moved_bytes);
    }
    let planned = Planned {
        ranges: &prepared.ranges,
        file_runs: prepared.file_runs,
    };
    verdict_of(inspected, file, &planned, pass.moved_bytes)
}

/// The move where the file is swapped whole: the copy into the donor, then
/// the swap (`swap`). A writer that appended meanwhile made the kernel
/// refuse the swap, so there is no tail to follow.
fn run_swap(
    inspected: &Inspected,
    prepared: Prepared,
    options: &MoveOptions,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let before = inspected.assessment;
    let block_size = inspected.fs.block_size;
    // Nothing holds the file while its copy is made, so the chunk is only
    // the throttle's unit: a large one lets each copy call read a long
    // stretch at once.
    let chunk_bytes = prepared.relocation.chunk_bytes(options.chunk_bytes);
    let chunk_blocks = plan::chunk_blocks(chunk_bytes, block_size);
    let chunks = plan::chunks(&prepared.ranges, chunk_blocks, 0);
    let planned = Planned {
        ranges: &prepared.ranges,
        file_runs: prepared.file_runs,
    };
    let file = prepared.file.as_fd();
    match swap::copy_then_swap(
        file,
        prepared.relocation,
        &chunks,
        block_size,
        inspected.size,
        supervisor,
    ) {
        Ok(bytes) => verdict_of(inspected, file, &planned, bytes),
        Err((halt, bytes)) => halted(before, halt, bytes),
    }
}

/// What a move planned: the ranges it relocated and the physical runs they
/// lay in before, to judge the result by.
struct Planned<'a> {
    ranges: &'a [BlockRange],
    file_runs: u64,
}

/// The outcome of a move that halted with `moved_bytes` moved.
fn halted(before: Assessment, halt: Halt, moved_bytes: u64) -> Outcome {
    match halt {
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
    }
}

/// Measures the file after its move and judges it against its layout at
/// the start.
fn verdict_of(
    inspected: &Inspected,
    file: BorrowedFd<'_>,
    planned: &Planned<'_>,
    moved_bytes: u64,
) -> Outcome {
    let before = inspected.assessment;
    let measured = match verdict::measure(
        file,
        inspected.backend,
        inspected.fs.block_size,
        inspected.fs.max_extent_blocks,
    ) {
        Ok(measured) => measured,
        Err(e) => return halted(before, Halt::Failed(e.into()), moved_bytes),
    };
    let judged = verdict::judge(&verdict::Layouts {
        before: &before,
        after: &measured.assessment,
        planned_before: planned.file_runs,
        planned_after: measured.map.extent_count_in(planned.ranges),
        placed_by: inspected.backend.placement(),
    });
    match judged {
        Ok(()) => Outcome::Defragmented(Moved {
            before,
            after: measured.assessment,
            bytes_moved: moved_bytes,
            converted: false,
        }),
        Err(reason) => halted(before, Halt::Failed(reason), moved_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
