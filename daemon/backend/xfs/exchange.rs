//! One exchange: the donor built beside the file, the file's data copied
//! into it chunk by chunk, and the kernel's checked swap, in one of two
//! modes chosen when the donor is built ([`Mode`]): the whole file at the
//! end with SWAPEXT, or chunk by chunk with COMMIT_RANGE where the kernel
//! and the filesystem have it. The snapshot SWAPEXT is checked against is
//! taken first, before anything else, so that every write to the file
//! after it makes the swap refuse; COMMIT_RANGE samples the file's
//! freshness again before each chunk's copy.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::assess::{BlockRange, ExtentMap};
use crate::backend::check_free_space;
use crate::outcome::{FailReason, KernelError, KernelErrorKind, Refusal, SkipReason};
use crate::plan::Chunk;
use crate::sys::{self, AlignedBuf, Flush};
use crate::xfs::{self, CommitError, CommitRequest, Snapshot, SwapError};

use super::copy::{copy_piece, pieces};

/// Bytes copied per direct-I/O call: large enough that a read over a
/// fragmented stretch sends the device many requests at once (xfs_fsr
/// reads 16 MiB at a time; 1 MiB calls made the copy 2-4x slower than
/// xfs_fsr's on a file in 64 KiB pieces), small enough to hold in memory
/// once per move.
const COPY_BUFFER: u64 = 8 << 20;

/// Why a copy or the swap did not go through. The file is untouched in
/// every case: the copy is the donor's alone until the swap succeeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(
        "the file shrank during the copy (its end came before its size said): nothing was \
         swapped and the file is as its writer left it; retry later"
    )]
    Shrank,
    #[error(
        "blocks {start}..{end} lie outside the file's data ranges the donor was made for: \
         holes must stay holes, so nothing was copied there (a bug in the caller)"
    )]
    OutsideRanges { start: u64, end: u64 },
    #[error(
        "the donor still lacks the file's data at blocks {start}..{end} (not copied, or \
         preallocated and never written): nothing was swapped, the file is intact"
    )]
    Incomplete { start: u64, end: u64 },
    #[error("{0}")]
    Io(sys::Error),
    #[error("{0}")]
    Swap(SwapError),
    #[error("{0}")]
    Commit(CommitError),
}

impl ExchangeError {
    /// The file was written during the move: not a fault, a retry.
    pub fn file_changed(&self) -> bool {
        matches!(
            self,
            ExchangeError::Shrank
                | ExchangeError::Swap(SwapError::Changed)
                | ExchangeError::Swap(SwapError::SizeChanged)
                | ExchangeError::Commit(CommitError::Changed)
                // The first commit found no COMMIT_RANGE after the probe
                // found one: the next attempt probes again and swaps with
                // SWAPEXT.
                | ExchangeError::Commit(CommitError::Unsupported(_))
        )
    }
}

impl From<ExchangeError> for KernelError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Io(e)
            | ExchangeError::Swap(SwapError::Kernel(e))
            | ExchangeError::Commit(CommitError::Kernel(e)) => e.into(),
            other => KernelError {
                kind: if other.file_changed() {
                    KernelErrorKind::Busy
                } else {
                    KernelErrorKind::Other
                },
                detail: other.to_string(),
            },
        }
    }
}

/// How the donor's data becomes the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// XFS_IOC_SWAPEXT, once, after the whole copy: every XFS has it. The
    /// donor must hold all of the file's data.
    SwapExt,
    /// XFS_IOC_START_COMMIT before each chunk's copy, XFS_IOC_COMMIT_RANGE
    /// after it: each chunk is the file's as soon as it is committed, so a
    /// stopped move keeps what it did and a writer costs one chunk.
    CommitRange,
}

/// A donor for one file, filled chunk by chunk, then swapped in whole or
/// committed chunk by chunk ([`Mode`]).
#[derive(Debug)]
pub struct Exchange {
    /// In [`Mode::CommitRange`]: the file opened through its XFS handle,
    /// read-write and invisible (no change or modify time updates), that
    /// the commits are made on. None in [`Mode::SwapExt`].
    committer: Option<OwnedFd>,
    /// The donor: O_TMPFILE, read-write, O_DIRECT.
    donor: OwnedFd,
    /// The file, read-only with O_DIRECT: its own open file description.
    reader: OwnedFd,
    before: Snapshot,
    /// The file's data ranges inside its size: the donor's, exactly.
    ranges: Vec<BlockRange>,
    block_size: u64,
    extents: u64,
    buf: AlignedBuf,
}

impl Exchange {
    /// Takes the file's snapshot, then builds the donor: an O_TMPFILE in
    /// `dir` (the file's directory, so the donor's inode, and its data, go
    /// to the file's allocation group), owned as the file, with its
    /// project and extent size hint, `size` bytes long and preallocated
    /// over `ranges` only (holes stay holes). `ranges` must hold all of
    /// the file's data: XFS swaps whole files. Refuses when the donor
    /// would not leave `reserve_percent` of the filesystem free.
    pub fn build(
        file: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        ranges: &[BlockRange],
        block_size: u64,
        size: u64,
        reserve_percent: f64,
    ) -> Result<Exchange, Refusal> {
        // First of all: every write to the file from here on is seen.
        let before = Snapshot::of(file)?;
        // On XFS, and in its blocks (ENOTTY elsewhere).
        let geometry = xfs::geometry(file)?;
        if u64::from(geometry.block_size) != block_size {
            return Err(Refusal::Fail(FailReason::Filesystem(format!(
                "the filesystem's block size is {}, not {block_size}",
                geometry.block_size
            ))));
        }
        if before.size != size {
            return Err(SkipReason::Busy(format!(
                "it is {} bytes now, {size} when it was inspected",
                before.size
            ))
            .into());
        }
        let ranges = within_size(ranges, size, block_size);
        let need = crate::backend::rewritten_bytes(&ranges, block_size);
        check_free_space(file, need, reserve_percent)?;

        let donor = sys::create_tmpfile(dir)?;
        let committer = committer(file, dir, donor.as_fd(), geometry.exchange_range)?;
        if committer.is_none() {
            check_covers_data(file, &ranges, size, block_size)?;
        }
        dress_like(donor.as_fd(), file)?;
        // Before any allocation: an attribute fork placed on an empty
        // data fork goes exactly where it is asked to.
        // Best effort: without it, only files near the inline extent limit
        // are refused, by the kernel, with nothing lost.
        if let Err(e) = super::attr_fork::match_file(donor.as_fd(), file, &geometry) {
            tracing::debug!("the donor's attribute fork could not be shaped: {e}");
        }
        sys::set_len(donor.as_fd(), size)?;
        for r in &ranges {
            let offset = r.start * block_size;
            // Never past the file's size: fallocate would grow the donor.
            let len = (r.end() * block_size).min(size) - offset;
            sys::allocate(donor.as_fd(), offset, len).map_err(|e| match e {
                // Another writer took the space since the check.
                sys::Error::NoSpace => match check_free_space(file, need, reserve_percent) {
                    Err(refusal) => refusal,
                    Ok(()) => Refusal::Fail(sys::Error::NoSpace.into()),
                },
                other => Refusal::from(other),
            })?;
        }
        sys::set_direct_io(donor.as_fd())?;
        let map = ExtentMap::from_fiemap(&sys::fiemap(donor.as_fd(), Flush::No)?, block_size);
        if map.data_ranges() != ranges {
            return Err(Refusal::Fail(FailReason::DonorMismatch(format!(
                "asked for {} ranges, got {}",
                ranges.len(),
                map.data_ranges().len()
            ))));
        }
        let extents = map.extent_count_in(&ranges);
        let reader = sys::reopen_direct_read(file)?;
        let buf_len = (COPY_BUFFER / block_size.max(1)).max(1) * block_size.max(1);
        let align = sys::page_size().max(block_size.min(1 << 16)) as usize;
        let buf = usize::try_from(buf_len)
            .ok()
            .and_then(|len| AlignedBuf::new(len, align))
            .ok_or(Refusal::Fail(sys::Error::NoSpace.into()))?;
        Ok(Exchange {
            committer,
            donor,
            reader,
            before,
            ranges,
            block_size,
            extents,
            buf,
        })
    }

    /// How the copy becomes the file's.
    pub fn mode(&self) -> Mode {
        match self.committer {
            Some(_) => Mode::CommitRange,
            None => Mode::SwapExt,
        }
    }

    /// Relocates `chunk`: copies it into the donor ([`Mode::SwapExt`]), or
    /// copies and commits it ([`Mode::CommitRange`], see `commit_chunk`).
    /// The bytes of file data copied.
    pub fn relocate(&mut self, chunk: &Chunk) -> Result<u64, ExchangeError> {
        match self.committer.take() {
            None => self.copy(chunk),
            Some(committer) => {
                let result = self.commit_chunk(committer.as_fd(), chunk);
                self.committer = Some(committer);
                result
            }
        }
    }

    /// The extents (as filefrag counts them) the donor's blocks lie in:
    /// the file's after the swap. Worth it only if fewer than the file's
    /// (see `refuse_donor`).
    pub fn extents(&self) -> u64 {
        self.extents
    }

    /// The file as it was before the copy: what the swap is checked
    /// against.
    pub fn snapshot(&self) -> &Snapshot {
        &self.before
    }

    /// Copies `chunk` of the file into the donor with direct I/O; the
    /// bytes of file data copied. The file does not see it until `swap`.
    pub fn copy(&mut self, chunk: &Chunk) -> Result<u64, ExchangeError> {
        let bs = self.block_size;
        let inside = |r: &BlockRange| r.start <= chunk.start && chunk.end() <= r.end();
        let last = self.before.size.div_ceil(bs.max(1));
        if chunk.start < last && !self.ranges.iter().any(inside) {
            return Err(ExchangeError::OutsideRanges {
                start: chunk.start,
                end: chunk.end(),
            });
        }
        let mut copied = 0;
        let mut past_end = false;
        let all = pieces(
            chunk.start.saturating_mul(bs),
            chunk.end().saturating_mul(bs),
            self.before.size,
            bs,
            self.buf.len() as u64,
        );
        for piece in all {
            past_end |= piece.offset + piece.io_len > self.before.size;
            copied += copy_piece(
                self.reader.as_fd(),
                self.donor.as_fd(),
                &mut self.buf,
                piece,
                bs,
            )?;
        }
        if past_end {
            // The last block went whole; the donor must end where the file does.
            sys::set_len(self.donor.as_fd(), self.before.size).map_err(ExchangeError::Io)?;
        }
        Ok(copied)
    }

    /// Makes the donor's data durable, so that the swap, once in the log,
    /// never points the file at blocks whose data is not on disk. `swap`
    /// does it too; calling it first keeps the swap itself short.
    pub fn sync_donor(&self) -> Result<(), ExchangeError> {
        sys::sync_all(self.donor.as_fd()).map_err(ExchangeError::Io)
    }

    /// In [`Mode::CommitRange`]: copies `chunk` into the donor and
    /// exchanges it with the file's, if the file did not change between
    /// the freshness sample taken before the copy and the exchange (else
    /// [`ExchangeError::file_changed`]: nothing of this chunk was
    /// exchanged, retry it later). The bytes of file data exchanged.
    ///
    /// The donor's copy is made durable before the exchange, so the
    /// exchange, once in the log, never points the file at blocks whose
    /// data is not on disk; the exchange itself is durable once the log
    /// is forced (`make_durable`: fsync of the file). A crash between
    /// leaves the chunk old or new, both with the same data.
    fn commit_chunk(&mut self, file: BorrowedFd<'_>, chunk: &Chunk) -> Result<u64, ExchangeError> {
        let fresh = xfs::start_commit(file).map_err(ExchangeError::Commit)?;
        // This stat, after the sample and before the copy, does two
        // things. On kernels with fine-grained timestamps (6.13+) it makes
        // the next change of the file get a new ctime even within the same
        // clock tick (START_COMMIT reads the ctime without asking for
        // that): a write after it always makes the commit refuse, and a
        // write before it is in what the copy reads. And a size change
        // since the donor was built, which the kernel would refuse as a
        // misaligned range (EINVAL) before its freshness check says why,
        // is seen here as the write it is.
        let now = Snapshot::of(file).map_err(ExchangeError::Io)?;
        if now.size != self.before.size {
            return Err(ExchangeError::Commit(CommitError::Changed));
        }
        let copied = self.copy(chunk)?;
        let Some((offset, length)) =
            xfs::commit_length(chunk.start, chunk.end(), self.before.size, self.block_size)
        else {
            return Ok(copied);
        };
        sys::sync_data(self.donor.as_fd()).map_err(ExchangeError::Io)?;
        let request = CommitRequest {
            offset,
            length,
            flags: 0,
        };
        match xfs::commit_range(file, self.donor.as_fd(), request, &fresh) {
            Ok(()) => {}
            // A writer changed the size after the stat above.
            Err(CommitError::Refused)
                if Snapshot::of(file).is_ok_and(|s| s.size != self.before.size) =>
            {
                return Err(ExchangeError::Commit(CommitError::Changed));
            }
            Err(e) => return Err(ExchangeError::Commit(e)),
        }
        // The donor now holds the file's old blocks of the chunk: free
        // them now rather than when the donor is closed, so a move holds
        // about one chunk of extra space, not the whole file's.
        if let Err(e) = sys::punch_hole(self.donor.as_fd(), offset, length) {
            tracing::debug!("freeing the old blocks of {offset}+{length} early failed: {e}");
        }
        Ok(copied)
    }

    /// Makes what was relocated so far survive a power cut: the donor's
    /// data before a SWAPEXT; the chunks committed so far with
    /// COMMIT_RANGE, whose exchanges an fsync of the file forces into the
    /// log.
    pub fn make_durable(&self) -> Result<(), ExchangeError> {
        match &self.committer {
            None => self.sync_donor(),
            Some(file) => sys::sync_all(file.as_fd()).map_err(ExchangeError::Io),
        }
    }

    /// Swaps the donor's data into `file` (open read-write, not O_APPEND)
    /// if the file has not changed since the snapshot; its old blocks go
    /// with the donor, which XFS frees when it is closed. On
    /// [`ExchangeError::file_changed`] nothing was swapped: build a new
    /// exchange later.
    pub fn swap(self, file: BorrowedFd<'_>) -> Result<(), ExchangeError> {
        self.sync_donor()?;
        self.check_complete()?;
        xfs::swap_extents(file, self.donor.as_fd(), &self.before).map_err(ExchangeError::Swap)
    }
}

impl Exchange {
    /// The donor, as the kernel maps it, must hold written data over
    /// exactly the file's data ranges: a range never copied is still
    /// preallocated (unwritten, reads as zeros), and swapping it in would
    /// lose the file's data there.
    fn check_complete(&self) -> Result<(), ExchangeError> {
        let raw = sys::fiemap(self.donor.as_fd(), Flush::No).map_err(ExchangeError::Io)?;
        let bs = self.block_size.max(1);
        if let Some(e) = raw.iter().find(|e| e.flags.is_unwritten()) {
            return Err(ExchangeError::Incomplete {
                start: e.logical / bs,
                end: (e.logical + e.length).div_ceil(bs),
            });
        }
        let held = ExtentMap::from_fiemap(&raw, bs).data_ranges();
        if held != self.ranges {
            let first = self.ranges.first().map_or(0, |r| r.start);
            let end = self.ranges.last().map_or(0, |r| r.end());
            return Err(ExchangeError::Incomplete { start: first, end });
        }
        Ok(())
    }
}

/// The exchange's mode on this filesystem, as the fd to commit through:
/// [`Mode::CommitRange`] (Some) where the geometry says the filesystem has
/// the feature, the file opens invisibly through `dir` (so that the
/// commits leave its times alone, as SWAPEXT does) and a dry run between
/// it and `donor` goes through; [`Mode::SwapExt`] (None) where any says no. Any other answer
/// of the dry run is a refusal: it changes nothing, so nothing is lost.
fn committer(
    file: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    exchange_range: bool,
) -> Result<Option<OwnedFd>, Refusal> {
    if !exchange_range {
        return Ok(None);
    }
    let invisible = match xfs::open_invisible(file, dir) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(
                "the file could not be opened by its XFS handle ({e}); COMMIT_RANGE would \
                 change its times, so SWAPEXT swaps it"
            );
            return Ok(None);
        }
    };
    match xfs::probe_commit_range(invisible.as_fd(), donor) {
        Ok(()) => Ok(Some(invisible)),
        Err(e) if e.calls_for_swapext() => {
            tracing::debug!("the filesystem has exchange-range but {e}");
            Ok(None)
        }
        Err(CommitError::Kernel(e)) => Err(e.into()),
        Err(e) => Err(Refusal::Fail(FailReason::Filesystem(e.to_string()))),
    }
}

/// `ranges` cut to the file's `size`: blocks past its end (XFS's
/// preallocation past EOF) are not the file's data and the donor must not
/// grow past the file.
fn within_size(ranges: &[BlockRange], size: u64, block_size: u64) -> Vec<BlockRange> {
    let last = size.div_ceil(block_size.max(1));
    let mut cut: Vec<BlockRange> = ranges
        .iter()
        .filter(|r| r.start < last && r.len > 0)
        .map(|r| BlockRange {
            start: r.start,
            len: r.end().min(last) - r.start,
        })
        .collect();
    // Sorted and merged, as a map's data ranges are, so that the donor's
    // map can be compared with them.
    cut.sort_by_key(|r| r.start);
    let mut merged: Vec<BlockRange> = Vec::with_capacity(cut.len());
    for r in cut {
        match merged.last_mut() {
            Some(prev) if prev.end() >= r.start => {
                prev.len = prev.end().max(r.end()) - prev.start;
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// Refuses unless every block of data the file holds inside its size lies
/// in `ranges`: the swap replaces the whole file, and data left out of
/// the donor would be lost.
fn check_covers_data(
    file: BorrowedFd<'_>,
    ranges: &[BlockRange],
    size: u64,
    block_size: u64,
) -> Result<(), Refusal> {
    let map = ExtentMap::from_fiemap(&sys::fiemap(file, Flush::Yes)?, block_size);
    if map.problem.is_some() {
        return Err(SkipReason::Busy("its map changed while it was read".into()).into());
    }
    let data = within_size(&map.data_ranges(), size, block_size);
    let covered = |d: &BlockRange| {
        ranges
            .iter()
            .any(|r| r.start <= d.start && d.end() <= r.end())
    };
    match data.iter().find(|d| !covered(d)) {
        None => Ok(()),
        Some(d) => Err(Refusal::Fail(FailReason::DonorMismatch(format!(
            "the ranges leave out data at blocks {}..{}; XFS swaps whole files, so the donor \
             must hold all of it",
            d.start,
            d.end()
        )))),
    }
}

/// Gives the donor the file's owner and project (which XFS requires to
/// match when quotas are on) and its extent size hint (so the donor's
/// allocation follows it; it can only be set before any allocation).
fn dress_like(donor: BorrowedFd<'_>, file: BorrowedFd<'_>) -> Result<(), Refusal> {
    let st = sys::stat(file)?;
    nix::unistd::fchown(
        donor,
        Some(nix::unistd::Uid::from_raw(st.st_uid)),
        Some(nix::unistd::Gid::from_raw(st.st_gid)),
    )
    .map_err(|errno| sys::Error::of("fchown (donor)", errno))?;
    let theirs = sys::get_fsxattr(file)?;
    let original = sys::get_fsxattr(donor)?;
    let mut ours = original;
    ours.projid = theirs.projid;
    if theirs.xflags.extent_size_hint() && theirs.extsize > 0 {
        ours.xflags |= sys::XFlags::EXTSIZE;
        ours.extsize = theirs.extsize;
    }
    if ours != original {
        sys::set_fsxattr(donor, &ours)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_to_the_files_last_block() {
        let ranges = [
            BlockRange { start: 0, len: 4 },
            BlockRange { start: 6, len: 10 },
            BlockRange { start: 20, len: 2 },
        ];
        // 10,000 bytes: blocks 0..3 of 4 KiB.
        assert_eq!(
            within_size(&ranges, 10_000, 4096),
            vec![BlockRange { start: 0, len: 3 }]
        );
        let unmerged = [
            BlockRange { start: 10, len: 5 },
            BlockRange { start: 0, len: 10 },
            BlockRange { start: 12, len: 1 },
        ];
        assert_eq!(
            within_size(&unmerged, 1 << 20, 4096),
            vec![BlockRange { start: 0, len: 15 }]
        );
        assert_eq!(
            within_size(&ranges, 8 * 4096, 4096),
            vec![
                BlockRange { start: 0, len: 4 },
                BlockRange { start: 6, len: 2 }
            ]
        );
    }

    #[test]
    fn a_writer_is_a_retry_and_a_refusal_is_not() {
        let busy: KernelError = ExchangeError::Swap(SwapError::Changed).into();
        assert_eq!(busy.kind, KernelErrorKind::Busy);
        assert!(busy.detail.contains("written during the move"));
        let refused: KernelError = ExchangeError::Swap(SwapError::Refused).into();
        assert_eq!(refused.kind, KernelErrorKind::Other);
        let io: KernelError = ExchangeError::Io(sys::Error::Io).into();
        assert_eq!(io.kind, KernelErrorKind::Io);
        // A chunk whose commit found the file written is retried later;
        // the chunks committed before it stay the file's.
        let changed: KernelError = ExchangeError::Commit(CommitError::Changed).into();
        assert_eq!(changed.kind, KernelErrorKind::Busy);
        let refused: KernelError = ExchangeError::Commit(CommitError::Refused).into();
        assert_eq!(refused.kind, KernelErrorKind::Other);
        let eio = ExchangeError::Commit(CommitError::Kernel(sys::Error::Io));
        assert_eq!(KernelError::from(eio).kind, KernelErrorKind::Io);
    }
}
