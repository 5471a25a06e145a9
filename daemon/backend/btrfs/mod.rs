//! The btrfs backend: defragments with the kernel's own defragmenter
//! (BTRFS_IOC_DEFRAG_RANGE), only over ranges whose extents no snapshot
//! or reflinked copy shares, in bounded chunks paced by the policy's
//! extent threshold, with a file's compression passed on; an fsync of the
//! file makes each chunk durable before its cursor is saved.
//!
//! - `ranges`: which ranges are worth it (pure, over a FIEMAP map);
//! - `eligibility`: what btrfs refuses, before anything is written;
//! - `relocate`: DEFRAG_RANGE chunk by chunk, and the fsync;
//! - `seam`: what `crate::backend` asks of it (probe, refusals, the
//!   planned ranges narrowed to the selection, the map, the relocation).
//!
//! Crash recovery: nothing to clean up. The rewrite is copy-on-write, so
//! a crash leaves either the old extents or the new ones, data intact;
//! redoing a chunk is safe.

mod eligibility;
mod ranges;
mod relocate;
mod seam;
#[cfg(test)]
mod test_maps;

pub use eligibility::{compression_for, refuse_selection, refuse_unmovable, FileFacts};
pub use ranges::{pieces, select, Piece, Selection, Target, MAX_EXTENT_BYTES};
pub use relocate::{BtrfsDefrag, DefragFailed};
pub use seam::{
    extent_map, narrow_ranges, policy, probe, refuse_filesystem, refuse_inspected, relocation,
    BtrfsDetail, Policy,
};

/// btrfs' statfs magic number.
pub const MAGIC: i64 = crate::btrfs::MAGIC;

/// The longest extent btrfs records, in blocks of `block_size` bytes.
pub fn max_extent_blocks(block_size: u64) -> u64 {
    (MAX_EXTENT_BYTES / block_size.max(1)).max(1)
}

/// The extent threshold when the policy gives none: what
/// `btrfs filesystem defragment` uses by default (its `-t`, 32 MiB).
pub const DEFAULT_EXTENT_THRESH: u32 = 32 << 20;

/// The shortest chunk defragmented at a time. The kernel's defragmenter
/// reads ahead past the range it is given, into cache windows the mover's
/// page-cache keeper has not measured yet, which then count as resident
/// before and are kept: over an uncached 128 MiB file, 1 MiB chunks left
/// 2,900-4,600 of its 32,768 pages cached, 4 and 8 MiB chunks none, at the
/// same speed. A writer waits for one 256 KiB cluster of the kernel's, not
/// for the chunk, so longer chunks do not stall it longer.
pub const MIN_CHUNK_BYTES: u64 = 8 << 20;

/// Bytes of free space defragmenting `selection` takes at the most: every
/// byte rewritten, since the replaced extents are freed only at the next
/// transaction commit.
pub fn space_needed(selection: &Selection, block_size: u64) -> u64 {
    selection.blocks().saturating_mul(block_size)
}
