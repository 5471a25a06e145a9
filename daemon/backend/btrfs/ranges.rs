//! Which ranges of a file on btrfs are worth handing to the kernel's
//! defragmenter, from its FIEMAP map: runs of small, unshared extents that
//! the kernel can merge. Shared extents (snapshots, reflinked copies) are
//! never in a range, since DEFRAG_RANGE would rewrite them and end the
//! sharing; how many bytes stay shared is counted for `check`. Compressed
//! extents are judged by what they hold: btrfs stores compressed data in
//! pieces of at most 128 KiB, so a compressed file in one place is a row
//! of ENCODED extents whose disk addresses follow each other, and that row
//! is one piece, not hundreds. Pure functions over an extent list.

use crate::assess::BlockRange;
use crate::sys::{Extent, ExtentFlags};

/// The longest extent btrfs writes (BTRFS_MAX_EXTENT_SIZE): the kernel
/// leaves an extent this long alone whatever the threshold.
pub const MAX_EXTENT_BYTES: u64 = 128 << 20;

/// A stretch of a file that lies in one place on disk: one extent, or
/// several that follow each other logically and physically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset in the file.
    pub start: u64,
    /// Bytes of the file it holds.
    pub len: u64,
    /// A snapshot or a reflinked copy uses it too.
    pub shared: bool,
    /// Compressed (FIEMAP_EXTENT_ENCODED).
    pub compressed: bool,
    /// Real data the kernel's defragmenter rewrites: not preallocated,
    /// inline, delayed or of unknown location.
    pub movable: bool,
    /// FIEMAP extents in it.
    pub extents: u64,
    /// Physical address and length of its last extent, to judge the next.
    last_physical: u64,
    last_len: u64,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    fn of(e: &Extent) -> Piece {
        let f = e.flags;
        let encoded = f.is_encoded();
        let movable = !(f.is_unwritten()
            || f.is_inline()
            || f.is_delalloc()
            || f.is_encrypted()
            || f.intersects(ExtentFlags::UNKNOWN | ExtentFlags::NOT_ALIGNED));
        Piece {
            start: e.logical,
            len: e.length,
            shared: f.is_shared(),
            compressed: encoded,
            movable,
            extents: 1,
            last_physical: e.physical,
            last_len: e.length,
        }
    }

    /// Whether `next` continues this piece on disk. A plain extent must
    /// start where the last one ends. A compressed one holds `last_len`
    /// bytes of the file in at most as many bytes of disk (btrfs stores
    /// data uncompressed when compression does not shrink it), so the next
    /// one follows it if it starts after it and no further than that.
    fn continued_by(&self, next: &Piece) -> bool {
        let same_kind = next.shared == self.shared
            && next.compressed == self.compressed
            && next.movable == self.movable;
        if !same_kind || next.start != self.end() {
            return false;
        }
        if self.compressed {
            next.last_physical >= self.last_physical
                && next.last_physical - self.last_physical <= self.last_len
        } else {
            Some(next.last_physical) == self.last_physical.checked_add(self.last_len)
        }
    }
}

/// The file's pieces, in logical order.
pub fn pieces(extents: &[Extent]) -> Vec<Piece> {
    let mut sorted: Vec<&Extent> = extents.iter().filter(|e| e.length > 0).collect();
    sorted.sort_by_key(|e| e.logical);
    let mut out: Vec<Piece> = Vec::new();
    for e in sorted {
        let piece = Piece::of(e);
        match out.last_mut() {
            Some(last) if last.continued_by(&piece) => {
                last.len += piece.len;
                last.extents += 1;
                last.last_physical = piece.last_physical;
                last.last_len = piece.last_len;
            }
            _ => out.push(piece),
        }
    }
    out
}

/// One range to defragment, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub range: BlockRange,
    /// Its data is compressed: the rewrite must compress it too.
    pub compressed: bool,
    /// The pieces it is in now (at least 2).
    pub pieces: u64,
}

/// What a file on btrfs offers to defragment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub targets: Vec<Target>,
    /// Bytes of the file in shared extents: left alone, to stay shared.
    pub shared_bytes: u64,
    /// Shared pieces that are small enough that they would have been
    /// defragmented had they not been shared.
    pub shared_small_pieces: u64,
    /// The file's pieces, all of them.
    pub pieces: u64,
}

impl Selection {
    /// Blocks in the targets.
    pub fn blocks(&self) -> u64 {
        self.targets.iter().map(|t| t.range.len).sum()
    }

    /// The ranges to defragment, for the chunk planner.
    pub fn ranges(&self) -> Vec<BlockRange> {
        self.targets.iter().map(|t| t.range).collect()
    }

    /// Holds compressed data to rewrite.
    pub fn has_compressed(&self) -> bool {
        self.targets.iter().any(|t| t.compressed)
    }
}

/// The ranges of `extents` (a FIEMAP map) worth defragmenting on a
/// filesystem of `block_size`-byte sectors: each a row of at least two
/// pieces, logically contiguous, unshared, movable, all compressed or all
/// plain, each shorter than `extent_thresh` bytes (the policy's pace: the
/// kernel leaves longer extents where they are) and than btrfs' longest
/// extent.
pub fn select(extents: &[Extent], block_size: u64, extent_thresh: u64) -> Selection {
    let block_size = block_size.max(1);
    let limit = extent_thresh.clamp(1, MAX_EXTENT_BYTES);
    let all = pieces(extents);
    let small = |p: &Piece| p.len < limit;
    let mut selection = Selection {
        pieces: all.len() as u64,
        ..Selection::default()
    };
    let mut row: Vec<&Piece> = Vec::new();
    let flush = |row: &mut Vec<&Piece>, selection: &mut Selection| {
        if row.len() >= 2 {
            let (first, last) = (row[0], row[row.len() - 1]);
            let start = first.start / block_size;
            let end = last.end().div_ceil(block_size);
            selection.targets.push(Target {
                range: BlockRange {
                    start,
                    len: end - start,
                },
                compressed: first.compressed,
                pieces: row.len() as u64,
            });
        }
        row.clear();
    };
    for piece in &all {
        if piece.shared {
            selection.shared_bytes += piece.len;
            if piece.movable && small(piece) {
                selection.shared_small_pieces += 1;
            }
        }
        let joins = piece.movable && !piece.shared && small(piece);
        let continues = row
            .last()
            .is_some_and(|last| last.end() == piece.start && last.compressed == piece.compressed);
        if !(joins && continues) {
            flush(&mut row, &mut selection);
        }
        if joins {
            row.push(piece);
        }
    }
    flush(&mut row, &mut selection);
    selection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::btrfs::test_maps::{ext, K, PLAIN};
    use crate::sys::ExtentFlags;

    #[test]
    fn interleaved_small_extents_make_one_target() {
        // 4 pieces of 64 KiB, each elsewhere on disk.
        let map: Vec<Extent> = (0..4)
            .map(|i| ext(i * 64 * K, (10 + 3 * i) * 64 * K, 64 * K, PLAIN))
            .collect();
        let s = select(&map, 4096, 32 << 20);
        assert_eq!(s.targets.len(), 1);
        assert_eq!(s.targets[0].range, BlockRange { start: 0, len: 64 });
        assert_eq!(s.targets[0].pieces, 4);
        assert_eq!(s.shared_bytes, 0);
    }

    #[test]
    fn physically_contiguous_extents_are_one_piece() {
        let map = [
            ext(0, 1 << 20, 64 * K, PLAIN),
            ext(64 * K, (1 << 20) + 64 * K, 64 * K, PLAIN),
        ];
        assert_eq!(pieces(&map).len(), 1);
        let s = select(&map, 4096, 32 << 20);
        assert!(s.targets.is_empty(), "one piece: nothing to merge");
    }

    #[test]
    fn shared_extents_split_targets_and_are_counted() {
        let map = [
            ext(0, 100 * K, 64 * K, PLAIN),
            ext(64 * K, 900 * K, 64 * K, PLAIN),
            ext(128 * K, 1800 * K, 64 * K, ExtentFlags::SHARED),
            ext(192 * K, 2700 * K, 64 * K, ExtentFlags::SHARED),
            ext(256 * K, 3600 * K, 64 * K, PLAIN),
        ];
        let s = select(&map, 4096, 32 << 20);
        assert_eq!(s.targets.len(), 1, "{s:?}");
        assert_eq!(s.targets[0].range, BlockRange { start: 0, len: 32 });
        assert_eq!(s.shared_bytes, 128 * K);
        assert_eq!(s.shared_small_pieces, 2);
    }

    #[test]
    fn extents_at_the_threshold_and_preallocated_ones_are_left() {
        let map = [
            ext(0, 0, 64 * K, PLAIN),
            ext(64 * K, 9000 * K, 1 << 20, PLAIN),
            ext(
                64 * K + (1 << 20),
                20000 * K,
                64 * K,
                ExtentFlags::UNWRITTEN,
            ),
            ext(128 * K + (1 << 20), 30000 * K, 64 * K, PLAIN),
        ];
        // Threshold 1 MiB: the 1 MiB extent breaks the row, the
        // preallocated one too; no row of two small pieces is left.
        assert!(select(&map, 4096, 1 << 20).targets.is_empty());
        // Threshold 32 MiB: the first two join; prealloc still breaks it.
        let s = select(&map, 4096, 32 << 20);
        assert_eq!(s.targets.len(), 1);
        assert_eq!(s.targets[0].pieces, 2);
    }

    #[test]
    fn holes_break_rows() {
        let map = [
            ext(0, 0, 64 * K, PLAIN),
            ext(128 * K, 9000 * K, 64 * K, PLAIN),
            ext(192 * K, 19000 * K, 64 * K, PLAIN),
        ];
        let s = select(&map, 4096, 32 << 20);
        assert_eq!(s.targets.len(), 1);
        assert_eq!(s.targets[0].range, BlockRange { start: 32, len: 32 });
    }

    #[test]
    fn compressed_extents_are_judged_by_what_they_hold() {
        // 32 compressed extents of 128 KiB, 4 KiB apart on disk: one file
        // stored in one place, as btrfs writes a compressible file.
        let e = ExtentFlags::ENCODED;
        let contiguous: Vec<Extent> = (0..32)
            .map(|i| ext(i * 128 * K, (1 << 30) + i * 4 * K, 128 * K, e))
            .collect();
        assert_eq!(pieces(&contiguous).len(), 1);
        assert!(select(&contiguous, 4096, 32 << 20).targets.is_empty());
        // The same in two places: two pieces, one compressed target.
        let mut split = contiguous.clone();
        for x in &mut split[16..] {
            x.physical += 1 << 30;
        }
        let s = select(&split, 4096, 32 << 20);
        assert_eq!(s.targets.len(), 1);
        assert!(s.targets[0].compressed && s.has_compressed());
        assert_eq!(s.targets[0].range.len, 32 * 32);
    }

    #[test]
    fn compressed_and_plain_pieces_are_never_in_one_target() {
        let e = ExtentFlags::ENCODED;
        let map = [
            ext(0, 0, 128 * K, e),
            ext(128 * K, 9000 * K, 128 * K, e),
            ext(256 * K, 19000 * K, 64 * K, PLAIN),
            ext(320 * K, 29000 * K, 64 * K, PLAIN),
        ];
        let s = select(&map, 4096, 32 << 20);
        let kinds: Vec<bool> = s.targets.iter().map(|t| t.compressed).collect();
        assert_eq!(kinds, [true, false]);
    }

    #[test]
    fn nonsense_maps_do_not_panic() {
        let map = [
            ext(u64::MAX - 10, u64::MAX - 10, 100, PLAIN),
            ext(0, 0, 0, PLAIN),
            ext(5, u64::MAX, u64::MAX, ExtentFlags::ENCODED),
        ];
        let _ = select(&map, 0, 0);
        let _ = select(&[], 4096, 32 << 20);
    }
}
