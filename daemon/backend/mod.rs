//! The backend seam: what varies by filesystem type, and nothing else.
//!
//! Above the seam, the mover does the generic move for every filesystem:
//! open safely, inspect, plan chunks, pace them, keep the page cache,
//! checkpoint, verify before and after, say the outcome. Below it, one
//! module per filesystem type answers what only it knows:
//!
//! - probe and eligibility: which filesystems it serves (`fs_type`,
//!   `magic`), and why a file on one cannot be moved, as reason codes
//!   ([`Backend::refuse_unmovable`]);
//! - probing a filesystem of its type: the generic facts every layer
//!   above reads ([`crate::filesystem::FsInfo`], among them the longest
//!   extent it records, for the ideal extent count) and its own
//!   ([`crate::filesystem::FsDetail`]), which only it reads;
//! - how a range is relocated and made durable ([`Backend::relocation`],
//!   then [`Relocation::relocate`] and [`Relocation::make_durable`]);
//! - crash recovery: what a crash leaves and who cleans it up. For ext4,
//!   nothing is left to clean: its donor is an O_TMPFILE orphan the kernel
//!   frees at the next mount, and a cursor is only saved once
//!   `make_durable` has committed the moves before it.
//!
//! Generic syscalls (openat2, statx, FIEMAP, GETFSMAP, fadvise, O_TMPFILE,
//! ioprio, mincore) are in [`crate::sys`], shared by every backend;
//! ext4's own ioctls are in [`crate::ext4`], used by its backend only.
//!
//! # Why an enum, not a trait
//!
//! The backends are a closed set known at build time, picked by the
//! filesystem's type, in the way zincati picks its update strategy: one
//! module per backend, one enum arm each. A value of [`Backend`] is `Copy`,
//! goes into plain data (an inspected file, a covered filesystem) and
//! compares and prints without boxing; a move's per-backend state (ext4's
//! donor; XFS's donor and its swap; btrfs's file alone) is one more enum,
//! [`Relocation`], owned by the move with no trait object or generic
//! parameter spreading through the mover, the worker and the CLI. Each
//! `match` is exhaustive, so adding XFS or btrfs is one new module plus one
//! arm in each match below, and the compiler lists every arm still to
//! write. A trait would pay off for a simulator that tests the mover
//! without root (stratisd's engine); the mover is tested on real images,
//! and the pure logic above the seam without any backend at all.

pub mod btrfs;
pub mod ext4;
mod inspected;
pub mod xfs;

pub use inspected::Inspected;

use std::os::fd::{AsFd, BorrowedFd};

use crate::assess::{BlockRange, ExtentMap};
use crate::filesystem::{FsError, FsInfo};
use crate::outcome::{KernelError, Refusal, Size, SkipReason};
use crate::plan::Chunk;
use crate::sys;
use crate::target::Target;

/// A filesystem type defragd can move files on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Ext4,
    Xfs,
    Btrfs,
}

impl Backend {
    /// Every backend: the registry that decides which filesystem types are
    /// supported.
    pub const ALL: [Backend; 3] = [Backend::Ext4, Backend::Xfs, Backend::Btrfs];

    /// Who chooses where a move's data goes: a donor checked before it
    /// takes the file's place, or, on btrfs, the allocator as the kernel's
    /// defragmenter rewrites the data.
    pub fn placement(self) -> crate::outcome::Placement {
        match self {
            Backend::Ext4 | Backend::Xfs => crate::outcome::Placement::CheckedDonor,
            Backend::Btrfs => crate::outcome::Placement::Allocator,
        }
    }

    /// The type's name, as /proc/self/mountinfo shows it.
    pub fn fs_type(self) -> &'static str {
        match self {
            Backend::Ext4 => "ext4",
            Backend::Xfs => "xfs",
            Backend::Btrfs => "btrfs",
        }
    }

    /// The type's statfs magic number.
    fn magic(self) -> i64 {
        match self {
            Backend::Ext4 => ext4::MAGIC,
            Backend::Xfs => xfs::MAGIC,
            Backend::Btrfs => btrfs::MAGIC,
        }
    }

    /// The backend for a filesystem type named as in mountinfo; None when
    /// no backend serves it.
    pub fn for_fs_type(fs_type: &str) -> Option<Backend> {
        Self::ALL.into_iter().find(|b| b.fs_type() == fs_type)
    }

    /// The backend for a statfs magic number.
    pub fn for_magic(magic: i64) -> Option<Backend> {
        Self::ALL.into_iter().find(|b| b.magic() == magic)
    }

    /// Whether a file is mapped by indirect blocks (ext3's way), which no
    /// backend moves; `flags` when the file was opened, None when only its
    /// filesystem is known.
    pub fn block_mapped(self, fs: &FsInfo, flags: Option<sys::InodeFlags>) -> bool {
        match self {
            Backend::Ext4 => ext4::block_mapped(fs, flags),
            Backend::Xfs | Backend::Btrfs => false,
        }
    }

    /// Why no file on the filesystem `info` describes can be moved (its
    /// mount options and features); Ok when it can be covered.
    pub fn refuse_filesystem(self, info: &FsInfo) -> Result<(), SkipReason> {
        match self {
            Backend::Ext4 => ext4::refuse_filesystem(info),
            Backend::Xfs => xfs::refuse_filesystem(info),
            Backend::Btrfs => btrfs::refuse_filesystem(info),
        }
    }

    /// Why `inspected` cannot be moved, from its flags and its filesystem;
    /// Ok when nothing in them stands in the way.
    pub fn refuse_unmovable(self, inspected: &Inspected) -> Result<(), SkipReason> {
        match self {
            Backend::Ext4 => ext4::refuse_unmovable(inspected),
            Backend::Xfs => xfs::refuse_inspected(inspected),
            Backend::Btrfs => btrfs::refuse_inspected(inspected),
        }
    }

    /// Why no file on `fs` may be moved with the relocation it would get,
    /// for what that relocation risks in a crash, unless the operator has
    /// accepted it: SWAPEXT on XFS without rmapbt (`allow_xfs_swapext`).
    pub fn refuse_risky(self, fs: &FsInfo, allow_xfs_swapext: bool) -> Result<(), SkipReason> {
        match self {
            Backend::Ext4 | Backend::Btrfs => Ok(()),
            Backend::Xfs => xfs::refuse_risky_swap(fs, allow_xfs_swapext),
        }
    }

    /// Bytes of free space a relocation of `ranges` takes at the most,
    /// beyond what the file holds now.
    pub fn space_needed(self, ranges: &[BlockRange], block_size: u64) -> u64 {
        match self {
            Backend::Ext4 => ext4::space_needed(ranges, block_size),
            // Every byte rewritten: the replaced extents are freed only
            // at the next transaction commit.
            Backend::Xfs | Backend::Btrfs => rewritten_bytes(ranges, block_size),
        }
    }

    /// The map a file is measured and judged by, from its FIEMAP extents
    /// (on btrfs, a row of compressed extents that follow each other on
    /// disk is the one piece it is).
    pub fn extent_map(self, raw: &[sys::Extent], block_size: u64) -> ExtentMap {
        match self {
            Backend::Ext4 | Backend::Xfs => ExtentMap::from_fiemap(raw, block_size),
            Backend::Btrfs => btrfs::extent_map(raw, block_size),
        }
    }

    /// The mover's planned ranges of `inspected` (its data to the end of
    /// file, from block `resume_at`) narrowed to what this backend
    /// relocates. ext4 and XFS move every planned range; btrfs only the
    /// unshared ranges worth it (a snapshot's or a reflink's sharing is
    /// kept), and refuses a file with none, saying why.
    pub fn narrow_ranges(
        self,
        inspected: &Inspected,
        ranges: Vec<BlockRange>,
        resume_at: u64,
    ) -> Result<Vec<BlockRange>, Refusal> {
        match self {
            Backend::Ext4 | Backend::Xfs => Ok(ranges),
            Backend::Btrfs => btrfs::narrow_ranges(inspected, &ranges, resume_at),
        }
    }

    /// The btrfs subvolume the file or directory `fd` (open, not O_PATH)
    /// lives in; None on a type without subvolumes. On btrfs an inode
    /// number names a file only within its subvolume.
    pub fn subvolume(self, fd: BorrowedFd<'_>) -> sys::Result<Option<crate::btrfs::Subvolume>> {
        match self {
            Backend::Ext4 | Backend::Xfs => Ok(None),
            Backend::Btrfs => crate::btrfs::subvolume(fd).map(Some),
        }
    }

    /// Whether a stopped move on the filesystem `fs` can resume where it
    /// stopped. ext4 moves the file in place chunk by chunk, each
    /// committed; XFS commits chunk by chunk where it has COMMIT_RANGE,
    /// and elsewhere swaps the whole file at the end, so a stopped copy
    /// starts over.
    pub fn resumes_mid_file(self, fs: &FsInfo) -> bool {
        match self {
            Backend::Ext4 | Backend::Btrfs => true,
            Backend::Xfs => xfs::commits_ranges(fs),
        }
    }

    /// Gets ready to relocate `ranges` of `inspected` (a donor for ext4),
    /// within `reserve_percent` of the filesystem kept free. With
    /// `commit_first`, blocks freed a moment ago (by a move stopped or
    /// crashed, or an earlier round) are made free for the allocator first.
    pub fn relocation(
        self,
        target: &Target,
        inspected: &Inspected,
        ranges: &[BlockRange],
        reserve_percent: f64,
        commit_first: bool,
    ) -> Result<Relocation, Refusal> {
        match self {
            Backend::Ext4 => {
                ext4::Donor::build(target, inspected, ranges, reserve_percent, commit_first)
                    .map(Relocation::Ext4)
            }
            Backend::Xfs => xfs::Exchange::build(
                inspected.file.as_fd(),
                target.dir.as_fd(),
                ranges,
                inspected.fs.block_size,
                inspected.size,
                reserve_percent,
            )
            .map(Relocation::Xfs),
            Backend::Btrfs => btrfs::relocation(inspected, ranges, reserve_percent).map(|defrag| {
                Relocation::Btrfs {
                    defrag,
                    block_size: inspected.fs.block_size,
                }
            }),
        }
    }
}

/// Probes the filesystem `fd` lives on with the backend its type calls for.
pub fn probe(fd: BorrowedFd<'_>) -> Result<(Backend, FsInfo), FsError> {
    let magic = sys::fs_magic(fd)?;
    let backend = Backend::for_magic(magic).ok_or(FsError::Unsupported { magic })?;
    let info = match backend {
        Backend::Ext4 => ext4::probe(fd)?,
        Backend::Xfs => xfs::probe(fd)?,
        Backend::Btrfs => btrfs::probe(fd)?,
    };
    Ok((backend, info))
}

/// One move's state below the seam: where the data goes.
#[derive(Debug)]
pub enum Relocation {
    Ext4(ext4::Donor),
    /// The donor, filled by copies, then swapped in whole (SWAPEXT) or
    /// chunk by chunk (COMMIT_RANGE).
    Xfs(xfs::Exchange),
    /// The kernel's defragmenter over the unshared ranges chosen.
    Btrfs {
        defrag: btrfs::BtrfsDefrag,
        block_size: u64,
    },
}

/// A relocation call that failed, and how much of its range it moved first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelocateFailed {
    pub moved_blocks: u64,
    pub error: KernelError,
}

impl Relocation {
    /// The extents (as filefrag counts them) the data will lie in once
    /// relocated: a move is worth it only if they are fewer than the
    /// file's over the same ranges.
    pub fn extents(&self) -> u64 {
        match self {
            Relocation::Ext4(donor) => donor.extents(),
            Relocation::Xfs(exchange) => exchange.extents(),
            // btrfs has no donor: the kernel allocates as it rewrites, so
            // there is nothing to count before the move. The count given
            // is the best the rewrite can reach (one extent per target,
            // per 128 MiB), which is fewer than the pieces the targets are
            // in by construction (each target is at least two pieces, each
            // under the threshold), so the mover never refuses a btrfs
            // move for it; the verdict after the move judges what the
            // kernel really did.
            Relocation::Btrfs { defrag, block_size } => defrag.extents(*block_size),
        }
    }

    /// The bounded chunks to relocate `ranges` in, from block `resume_at`.
    /// On btrfs, its own chunking of the targets (compressed ones in
    /// longer chunks: see [`btrfs::BtrfsDefrag::chunks`]).
    pub fn chunks(
        &self,
        ranges: &[BlockRange],
        chunk_blocks: std::num::NonZeroU64,
        resume_at: u64,
    ) -> Vec<Chunk> {
        match self {
            Relocation::Ext4(_) | Relocation::Xfs(_) => {
                crate::plan::chunks(ranges, chunk_blocks, resume_at)
            }
            Relocation::Btrfs { defrag, block_size } => {
                defrag.chunks(chunk_blocks, resume_at, *block_size)
            }
        }
    }

    /// Whether the data reaches the file only at the end, in one swap
    /// ([`Relocation::swap_in`]): relocating a chunk then copies it into the
    /// donor, and nothing is in the file before the swap.
    pub fn swaps_whole_file(&self) -> bool {
        match self {
            Relocation::Ext4(_) => false,
            Relocation::Xfs(exchange) => exchange.mode() == xfs::Mode::SwapExt,
            Relocation::Btrfs { .. } => false,
        }
    }

    /// The chunk to relocate at a time, for `asked` bytes configured. ext4:
    /// as asked, since a writer to the file waits for MOVE_EXT's whole
    /// chunk. XFS: at least 8 MiB, since nothing holds the file while a
    /// chunk is copied (a commit holds it only while it exchanges the
    /// chunk's mappings) and long direct-I/O calls copy 2-4 times faster
    /// over a fragmented file than 1 MiB ones. btrfs: at least 8 MiB, for
    /// the page cache (see [`btrfs::MIN_CHUNK_BYTES`]).
    pub fn chunk_bytes(&self, asked: u64) -> u64 {
        match self {
            Relocation::Ext4(_) => asked,
            Relocation::Xfs(_) => asked.max(xfs::MIN_CHUNK_BYTES),
            Relocation::Btrfs { .. } => asked.max(btrfs::MIN_CHUNK_BYTES),
        }
    }

    /// Whether every chunk should be made durable as soon as it is
    /// relocated, rather than at the mover's checkpoints: where it costs
    /// little beside the chunk. XFS's commits: one log force per chunk of
    /// at least 8 MiB copied (and the donor's fdatasync before each commit
    /// forces the one before it anyway), so a crash redoes at most one
    /// chunk. ext4: a commit per 1 MiB MOVE_EXT would cost more than the
    /// moves.
    pub fn durable_each_chunk(&self) -> bool {
        match self {
            Relocation::Ext4(_) => false,
            Relocation::Xfs(exchange) => exchange.mode() == xfs::Mode::CommitRange,
            Relocation::Btrfs { .. } => false,
        }
    }

    /// Whether the mover should read a chunk into the page cache before
    /// relocating it: MOVE_EXT goes through the cache and is fast over
    /// pages already there. XFS copies with direct I/O, and its commit
    /// drops the range's cache anyway; btrfs' defragmenter reads the range
    /// itself, with read-ahead (reading it first cost 128 MiB 0.26-0.32 s
    /// against 0.24-0.29 s without).
    pub fn reads_through_cache(&self) -> bool {
        match self {
            Relocation::Ext4(_) => true,
            Relocation::Xfs(_) => false,
            Relocation::Btrfs { .. } => false,
        }
    }

    /// Relocates `chunk` of `file` (copies it into the donor, where the
    /// file is swapped whole; copies and commits it, where XFS commits
    /// ranges); the blocks moved, which the caller checks against the
    /// chunk's length.
    pub fn relocate(
        &mut self,
        file: BorrowedFd<'_>,
        chunk: &Chunk,
        block_size: u64,
    ) -> Result<u64, RelocateFailed> {
        match self {
            Relocation::Ext4(donor) => donor.relocate(file, chunk, block_size),
            // The copy counts bytes of file content; the last block may be
            // partial.
            Relocation::Xfs(exchange) => exchange
                .relocate(chunk)
                .map(|bytes| bytes.div_ceil(block_size))
                .map_err(|error| RelocateFailed {
                    moved_blocks: 0,
                    error: error.into(),
                }),
            Relocation::Btrfs { defrag, .. } => {
                defrag
                    .relocate(file, chunk, block_size)
                    .map_err(|failed| RelocateFailed {
                        moved_blocks: failed.moved_blocks,
                        error: failed.error,
                    })
            }
        }
    }

    /// Swaps the relocated data into `file` in one call, where the file is
    /// swapped whole; nothing to do where chunks were moved in place. The
    /// kernel refuses if the file changed since the relocation began (a
    /// `Busy` error: retry later).
    pub fn swap_in(self, file: BorrowedFd<'_>) -> Result<(), KernelError> {
        match self {
            Relocation::Ext4(_) | Relocation::Btrfs { .. } => Ok(()),
            Relocation::Xfs(exchange) => exchange.swap(file).map_err(KernelError::from),
        }
    }

    /// Makes the relocations so far survive a power cut.
    pub fn make_durable(&self, file: BorrowedFd<'_>) -> Result<(), KernelError> {
        match self {
            Relocation::Ext4(donor) => donor.make_durable(file).map_err(KernelError::from),
            // SWAPEXT: nothing is in the file before the swap, which is
            // logged; COMMIT_RANGE: the file's fsync forces the log.
            Relocation::Xfs(exchange) => exchange.make_durable().map_err(KernelError::from),
            // fsync: the chunks' writes, then their extents logged or
            // committed (see `btrfs::BtrfsDefrag::make_durable`).
            Relocation::Btrfs { defrag, .. } => defrag.make_durable(file),
        }
    }
}

/// Bytes in `ranges`: the free space a relocation that rewrites every
/// byte of them holds while it runs (XFS's donor until the swap; btrfs'
/// new extents until the old ones are freed at the commit).
pub fn rewritten_bytes(ranges: &[BlockRange], block_size: u64) -> u64 {
    ranges
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.len))
        .saturating_mul(block_size)
}

/// Refuses when `need` bytes would not leave `reserve_percent` of the
/// filesystem `fd` lives on free. Every backend's space check.
pub fn check_free_space(
    fd: BorrowedFd<'_>,
    need: u64,
    reserve_percent: f64,
) -> Result<(), Refusal> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_finds_each_backend_by_type_and_by_magic() {
        for backend in Backend::ALL {
            assert_eq!(Backend::for_fs_type(backend.fs_type()), Some(backend));
            assert_eq!(Backend::for_magic(backend.magic()), Some(backend));
        }
        assert_eq!(Backend::for_fs_type("ext4"), Some(Backend::Ext4));
        assert_eq!(Backend::for_fs_type("ext3"), None);
        assert_eq!(Backend::for_fs_type("tmpfs"), None);
        assert_eq!(Backend::for_magic(0x0102_1994), None);
    }
}
