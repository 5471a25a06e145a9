//! A model of ext4's buddy allocator, as far as asking for a donor's
//! blocks needs one: the block group layout, the free aligned chunks each
//! order has, and how one area is best asked for (padded to a power of two
//! one free chunk serves whole, or plainly first).

use crate::assess::BlockRange;
use crate::ext4;

/// How one area is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
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
pub(super) struct Request {
    pub(super) allocate: BlockRange,
    pub(super) trim: Option<BlockRange>,
}

impl Request {
    pub(super) fn exact(area: BlockRange) -> Self {
        Request {
            allocate: area,
            trim: None,
        }
    }

    /// `area` asked for as `len` blocks, the rest punched out after.
    pub(super) fn padded(area: BlockRange, len: u64) -> Self {
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
pub(super) const NO_NORMALIZE_MAX: u64 = 32767;

/// The block group layout, as the allocator's buddy bitmaps see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    /// The first block of group 0 (1 on filesystems of 1 KiB blocks).
    pub(super) first_block: u64,
    pub(super) blocks_per_group: u64,
    pub(super) groups_per_flex: u64,
    /// The largest power-of-two request (2^order blocks) the buddy
    /// allocator serves: 2^(block bits + 1), 32 MiB with 4 KiB blocks.
    pub(super) max_order: u32,
    /// Requests are not cut in pieces smaller than 1 MiB (2^order blocks)
    /// unless what is left is that small.
    pub(super) min_piece_order: u32,
    /// Whether the windows of a normalized request (8 MiB) are power-of-two
    /// requests the buddy allocator serves whole: not with 1 KiB blocks,
    /// whose 8 MiB windows are searched for like any odd size.
    pub(super) windows_fit: bool,
    /// The order of those windows (2^order blocks).
    pub(super) window_order: u32,
}

impl Geometry {
    pub(super) fn of(sb: &ext4::Superblock) -> Geometry {
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
    pub(super) fn largest_chunk(&self) -> u64 {
        (1u64 << self.max_order).min(NO_NORMALIZE_MAX)
    }

    /// What an area of `len` blocks is best asked for as, when the free
    /// space allows: the next power of two when one free chunk can serve
    /// that, else (where normalized windows serve well) one block past
    /// `NO_NORMALIZE_MAX`, else as it is.
    pub(super) fn padded(&self, len: u64) -> u64 {
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
    pub(super) fn serves_data(&self, group: u64) -> bool {
        self.groups_per_flex < 4 || !group.is_multiple_of(self.groups_per_flex)
    }
}

/// The free aligned chunks (2^order blocks, aligned to their size within
/// their block group) of the groups that serve data, counted by order:
/// what ext4's buddy allocator hands out whole to a power-of-two request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BuddyChunks {
    pub(super) geometry: Geometry,
    pub(super) by_order: Vec<u64>,
}

impl BuddyChunks {
    pub(super) fn new(geometry: Geometry) -> Self {
        BuddyChunks {
            geometry,
            by_order: vec![0; geometry.max_order as usize + 1],
        }
    }

    /// Counts the chunks of a free run, cut at block group edges.
    pub(super) fn add_run(&mut self, run: BlockRange) {
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
    pub(super) fn plan(&mut self, area: BlockRange, room: u64) -> Plan {
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
    pub(super) fn fallback(&mut self, area: BlockRange, room: u64) -> Vec<Request> {
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

    pub(super) fn has_chunk(&self, order: u32) -> bool {
        self.by_order
            .get(order as usize..)
            .is_some_and(|larger| larger.iter().any(|&n| n > 0))
    }

    /// Cuts `area` into requests, largest first: each a power of two for
    /// which a free chunk at least as large remains (then counted as
    /// taken). What is left when only chunks much smaller than it remain
    /// goes in one request: the allocator's own search takes whole free
    /// runs, where chunks would cut each run in several pieces.
    pub(super) fn pieces(&mut self, area: BlockRange) -> Vec<BlockRange> {
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
    pub(super) fn take(&mut self, order: u32) {
        let from = order as usize;
        if let Some(found) = (from..self.by_order.len()).find(|&o| self.by_order[o] > 0) {
            self.by_order[found] -= 1;
            for o in from..found {
                self.by_order[o] += 1;
            }
        }
    }
}

/// Builders shared by the allocator model's tests.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub(crate) fn r(start: u64, len: u64) -> BlockRange {
        BlockRange { start, len }
    }

    pub(crate) fn superblock() -> ext4::Superblock {
        ext4::Superblock {
            uuid: crate::filesystem::FsUuid([0; 16]),
            block_size: 4096,
            blocks_per_group: 32768,
            groups_per_flex: Some(16),
            has_extents: true,
            bigalloc: false,
            inline_data: false,
            encryption: false,
        }
    }

    pub(crate) fn geometry() -> Geometry {
        Geometry::of(&superblock())
    }

    pub(crate) fn chunks(counts: &[(u32, u64)]) -> BuddyChunks {
        let mut c = BuddyChunks::new(geometry());
        for &(order, n) in counts {
            c.by_order[order as usize] = n;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
}
