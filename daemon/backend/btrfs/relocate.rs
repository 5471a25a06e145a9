//! How btrfs relocates a range: the kernel's own defragmenter
//! (DEFRAG_RANGE) rewrites one bounded chunk of a range the selection
//! chose, with its writes issued at once (START_IO), and an fsync of the
//! file makes the rewrite survive a power cut.
//!
//! Durability: the rewrite is copy-on-write. Until the new extents are in
//! a committed transaction or the log tree, a crash leaves the old ones,
//! data intact, and only the work is lost. fsync of the file waits for
//! the chunk's writes to complete and then logs the file's new extent
//! items to the log tree, or commits the transaction: after a defrag it
//! did the latter on this kernel (6.18; the superblock's log_root stayed
//! 0). Either way the next mount has the new layout: an image copied
//! after the fsync (a power cut) mounted with the file in 1 extent, one
//! copied before it with the old 256 and the data intact
//! (tests/btrfs_defrag.rs). Only then may a cursor past the chunk be
//! saved. The commit also frees the extents the chunk replaced, which is
//! why compressed targets go in longer chunks (see `chunks`).

//! Shared extents: the selection leaves them out, and each chunk is
//! checked again just before the call, since a snapshot or a reflink made
//! during the move would make its extents shared. A snapshot taken between
//! that check and the call still loses the sharing of that one chunk: the
//! chunk's bound is what limits that cost.

use std::num::NonZeroU64;
use std::os::fd::BorrowedFd;

use super::ranges::{Selection, Target};
use crate::btrfs::{self, CompressType, Defrag};
use crate::outcome::{KernelError, KernelErrorKind};
use crate::plan::{self, Chunk};
use crate::sys::{self, Flush};

/// The least file data in one chunk of a compressed target (see
/// [`BtrfsDefrag::chunks`]).
pub const COMPRESSED_CHUNK_BYTES: u64 = 128 << 20;

/// A relocation call that failed, and how much of its range it processed
/// first (the seam's `RelocateFailed`, until btrfs is wired into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragFailed {
    pub moved_blocks: u64,
    pub error: KernelError,
}

/// One file's defragmentation below the seam: the ranges chosen, the pace
/// and the compression passed on.
#[derive(Debug, Clone)]
pub struct BtrfsDefrag {
    targets: Vec<Target>,
    /// Extents at least this long are left alone (bytes).
    extent_thresh: u32,
    /// The algorithm for compressed targets; None when there are none.
    compression: Option<CompressType>,
}

impl BtrfsDefrag {
    /// Defragments `selection`'s targets, leaving extents of at least
    /// `extent_thresh` bytes alone (the policy's pace), compressing
    /// compressed targets with `compression` (see
    /// `eligibility::compression_for`; required when the selection has
    /// compressed targets, else those targets are dropped).
    pub fn new(
        selection: &Selection,
        extent_thresh: u32,
        compression: Option<CompressType>,
    ) -> BtrfsDefrag {
        let targets = selection
            .targets
            .iter()
            .filter(|t| !t.compressed || compression.is_some())
            .copied()
            .collect();
        BtrfsDefrag {
            targets,
            extent_thresh: extent_thresh.max(1),
            compression,
        }
    }

    /// The bounded chunks to call the kernel on, from block `resume_at`:
    /// plain targets in chunks of `chunk_blocks`, compressed ones in
    /// chunks of [`COMPRESSED_CHUNK_BYTES`] of file data at least. Why
    /// longer: compressed data is allocated 128 KiB of file (often one or
    /// two disk blocks) at a time, and the fsync that makes a chunk
    /// durable also frees the extents it replaced, so the next chunk's
    /// small extents drop into those holes one by one (a 32 MiB zstd file
    /// in 256 pieces: 96 pieces after 8 MiB chunks with an fsync each, 1
    /// after one call; after a remount, when the allocator starts again
    /// from the older holes, 87, as many as `btrfs filesystem defragment
    /// -czstd` leaves). A writer still waits for 256 KiB at most: the
    /// kernel locks the range one 256 KiB cluster at a time.
    pub fn chunks(&self, chunk_blocks: NonZeroU64, resume_at: u64, block_size: u64) -> Vec<Chunk> {
        let compressed_blocks =
            NonZeroU64::new(COMPRESSED_CHUNK_BYTES / block_size.max(1)).unwrap_or(NonZeroU64::MIN);
        self.targets
            .iter()
            .flat_map(|t| {
                let blocks = if t.compressed {
                    chunk_blocks.max(compressed_blocks)
                } else {
                    chunk_blocks
                };
                plan::chunks(&[t.range], blocks, resume_at)
            })
            .collect()
    }

    /// The pieces the data will be in at best: one per target, or more
    /// where a target is longer than btrfs' longest extent.
    pub fn extents(&self, block_size: u64) -> u64 {
        let longest = (super::ranges::MAX_EXTENT_BYTES / block_size.max(1)).max(1);
        self.targets
            .iter()
            .map(|t| t.range.len.div_ceil(longest))
            .sum()
    }

    /// Defragments `chunk` of `file`; the blocks processed (the kernel
    /// does not say how many it rewrote: it skips what is already long
    /// enough, so every block of the chunk was dealt with).
    pub fn relocate(
        &self,
        file: BorrowedFd<'_>,
        chunk: &Chunk,
        block_size: u64,
    ) -> Result<u64, DefragFailed> {
        let fail = |error: KernelError| DefragFailed {
            moved_blocks: 0,
            error,
        };
        let compressed = self
            .targets
            .iter()
            .find(|t| t.range.start <= chunk.start && chunk.end() <= t.range.end())
            .is_some_and(|t| t.compressed);
        let start = chunk.start.saturating_mul(block_size);
        let len =
            NonZeroU64::new(chunk.len.get().saturating_mul(block_size)).unwrap_or(NonZeroU64::MIN);
        let end = start.saturating_add(len.get());
        let map = sys::fiemap_range(file, Flush::No, start, end).map_err(|e| fail(e.into()))?;
        let shared_now = map.iter().any(|e| {
            e.flags.is_shared()
                && e.logical < start.saturating_add(len.get())
                && start < e.logical.saturating_add(e.length)
        });
        if shared_now {
            return Err(fail(KernelError {
                kind: KernelErrorKind::Other,
                detail: "a snapshot or a reflinked copy started sharing this range during the \
                         move; it was left as it is so that the sharing is kept"
                    .into(),
            }));
        }
        let request = Defrag {
            start,
            len,
            extent_thresh: self.extent_thresh,
            compress: if compressed { self.compression } else { None },
        };
        btrfs::defrag_range(file, &request).map_err(|e| fail(e.into()))?;
        Ok(chunk.len.get())
    }

    /// Makes the chunks defragmented so far survive a power cut: fsync of
    /// the file (see the module's note).
    pub fn make_durable(&self, file: BorrowedFd<'_>) -> Result<(), KernelError> {
        sys::sync_all(file).map_err(KernelError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::BlockRange;

    fn selection() -> Selection {
        let target = |start, len, compressed| Target {
            range: BlockRange { start, len },
            compressed,
            pieces: 2,
        };
        Selection {
            targets: vec![target(0, 4096, false), target(10_000, 20_000, true)],
            ..Selection::default()
        }
    }

    #[test]
    fn plain_targets_are_chunked_and_compressed_ones_are_longer() {
        let d = BtrfsDefrag::new(&selection(), 1 << 20, Some(CompressType::Zstd));
        let blocks = NonZeroU64::new(1024).expect("non-zero");
        let got: Vec<(u64, u64)> = d
            .chunks(blocks, 0, 4096)
            .iter()
            .map(|c| (c.start, c.len.get()))
            .collect();
        // 128 MiB of 4 KiB blocks is 32768: the compressed target whole.
        assert_eq!(
            got,
            [
                (0, 1024),
                (1024, 1024),
                (2048, 1024),
                (3072, 1024),
                (10_000, 20_000)
            ]
        );
        let resumed = d.chunks(blocks, 3500, 4096);
        assert_eq!(resumed[0].start, 3500);
        assert_eq!(d.extents(4096), 2);
    }

    #[test]
    fn compressed_targets_are_dropped_without_an_algorithm() {
        let d = BtrfsDefrag::new(&selection(), 1 << 20, None);
        let blocks = NonZeroU64::new(1 << 20).expect("non-zero");
        assert_eq!(d.chunks(blocks, 0, 4096).len(), 1);
    }
}
