//! Measuring a file: its extents, physical runs, data ranges, the ideal
//! extent count (in its backend's longest extents) and a score; and e4defrag's filesystem-level score, so that
//! operators can compare one to one. Pure functions over an extent list.

use std::num::NonZeroU64;

use serde::Serialize;

use crate::sys::Extent;

/// A range of logical blocks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockRange {
    pub start: u64,
    pub len: u64,
}

impl BlockRange {
    /// One past the last block; `u64::MAX` for a range that would reach
    /// past it (no file has such blocks, but a range is plain data).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// One extent in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// Why a file's map cannot be moved as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapProblem {
    /// Dirty data without blocks yet: the file is being written.
    DelayedAllocation,
    /// Data stored inside the inode.
    Inline,
    /// Encrypted, encoded or not block-aligned; or an impossible map (a
    /// block size of 0, an extent that ends past the last block address),
    /// whose blocks cannot be where it says either.
    UnknownLocation,
}

/// A file's extents in blocks, sorted by logical offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtentMap {
    pub extents: Vec<BlockExtent>,
    pub problem: Option<MapProblem>,
}

impl ExtentMap {
    /// Converts FIEMAP's byte extents into blocks of `block_size` bytes,
    /// one block extent per FIEMAP extent. What the kernel never reports
    /// (zero lengths, overlaps, values at u64's end) is kept as it is and
    /// measured without overflow; a map no file can have is a problem.
    pub fn from_fiemap(raw: &[Extent], block_size: u64) -> Self {
        let Some(block_size) = NonZeroU64::new(block_size) else {
            return ExtentMap {
                extents: Vec::new(),
                problem: Some(MapProblem::UnknownLocation),
            };
        };
        let mut problem = None;
        let mut extents = Vec::with_capacity(raw.len());
        for e in raw {
            if e.flags.is_delalloc() {
                problem = Some(MapProblem::DelayedAllocation);
            } else if e.flags.is_inline() {
                problem = Some(MapProblem::Inline);
            } else if e.flags.location_unknown() || e.flags.is_encrypted() {
                problem = Some(MapProblem::UnknownLocation);
            }
            let extent = BlockExtent {
                logical: e.logical / block_size,
                physical: e.physical / block_size,
                len: e.length.div_ceil(block_size.get()),
            };
            // Past u64 only with 1-byte blocks; the figures saturate, but
            // no move may trust such a map.
            let impossible = extent.logical.checked_add(extent.len).is_none()
                || extent.physical.checked_add(extent.len).is_none();
            if impossible && problem.is_none() {
                problem = Some(MapProblem::UnknownLocation);
            }
            extents.push(extent);
        }
        extents.sort_by_key(|e| e.logical);
        ExtentMap { extents, problem }
    }

    /// Extents as FIEMAP lists them. The kernel may list physically
    /// contiguous pieces separately (at the 32768-block limit, at a
    /// written/unwritten edge, or as its extent cache happens to hold them),
    /// so this varies for the same layout; e4defrag's score uses it.
    pub fn fiemap_entries(&self) -> u64 {
        self.extents.len() as u64
    }

    /// Extents as `filefrag` counts them: a new one wherever a piece does
    /// not lie where the previous one says it would (its physical offset
    /// minus the logical offset changes; a hole that is matched by an
    /// equal physical gap does not count). Stable for a layout, and what
    /// operators can check with a tool nobody here wrote.
    pub fn extent_count(&self) -> u64 {
        filefrag_count(self.extents.iter().copied())
    }

    /// Extents as `filefrag` would count them, counting only the parts of
    /// extents inside `ranges`: what the file would be left in, were those
    /// ranges the whole file. A donor is judged by it, as the file is
    /// after the move: a donor whose pieces lie where the file's holes say
    /// (each hole matched by a free gap of its size) leaves one extent
    /// where `physical_runs_in` counts one per data range.
    pub fn extent_count_in(&self, ranges: &[BlockRange]) -> u64 {
        filefrag_count(self.pieces(Some(ranges)))
    }

    /// Blocks mapped, holes excluded.
    pub fn blocks(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.len))
    }

    /// Runs of extents that are contiguous both logically and physically:
    /// what a reader really seeks between.
    pub fn physical_runs(&self) -> u64 {
        self.runs_within(None)
    }

    /// Physical runs, counting only the parts of extents inside `ranges`.
    pub fn physical_runs_in(&self, ranges: &[BlockRange]) -> u64 {
        self.runs_within(Some(ranges))
    }

    fn runs_within(&self, ranges: Option<&[BlockRange]>) -> u64 {
        let mut runs = 0;
        let mut expected: Option<(u64, u64)> = None; // (next logical, next physical)
        for piece in self.pieces(ranges) {
            if expected != Some((piece.logical, piece.physical)) {
                runs += 1;
            }
            expected = Some((
                piece.logical.saturating_add(piece.len),
                piece.physical.saturating_add(piece.len),
            ));
        }
        runs
    }

    /// The extents, cut to `ranges` when given.
    fn pieces<'a>(
        &'a self,
        ranges: Option<&'a [BlockRange]>,
    ) -> impl Iterator<Item = BlockExtent> + 'a {
        self.extents.iter().flat_map(move |e| {
            let whole = [BlockRange {
                start: e.logical,
                len: e.len,
            }];
            let cuts: Vec<BlockExtent> = ranges
                .unwrap_or(&whole)
                .iter()
                .filter_map(|r| {
                    let start = r.start.max(e.logical);
                    let end = r.end().min(e.logical.saturating_add(e.len));
                    (start < end).then(|| BlockExtent {
                        logical: start,
                        physical: e.physical.saturating_add(start - e.logical),
                        len: end - start,
                    })
                })
                .collect();
            cuts
        })
    }

    /// Logically contiguous stretches of mapped blocks: holes split them.
    pub fn data_ranges(&self) -> Vec<BlockRange> {
        let mut ranges: Vec<BlockRange> = Vec::new();
        // A zero-length extent maps nothing (ext4 never reports one).
        for e in self.extents.iter().filter(|e| e.len > 0) {
            match ranges.last_mut() {
                Some(last) if last.end() >= e.logical => {
                    let end = last.end().max(e.logical.saturating_add(e.len));
                    last.len = end - last.start;
                }
                _ => ranges.push(BlockRange {
                    start: e.logical,
                    len: e.len,
                }),
            }
        }
        ranges
    }

    /// The fewest extents a filesystem whose longest extent is `longest`
    /// blocks (its backend's `max_extent_blocks`) could store this data
    /// in: each data range in pieces of at most `longest` blocks.
    pub fn ideal_extents(&self, longest: u64) -> u64 {
        ideal_extents(&self.data_ranges(), longest)
    }
}

/// `filefrag`'s count of `extents` (in logical order): a new extent
/// wherever one does not lie where the previous one says it would.
fn filefrag_count(extents: impl Iterator<Item = BlockExtent>) -> u64 {
    let mut count = 0;
    let mut previous: Option<BlockExtent> = None;
    for e in extents {
        let continues = previous.is_some_and(|p| {
            e.logical >= p.logical.saturating_add(p.len)
                && e.physical.checked_sub(p.physical) == Some(e.logical - p.logical)
        });
        if !continues {
            count += 1;
        }
        previous = Some(e);
    }
    count
}

/// The fewest extents of at most `longest` blocks that can hold `ranges`.
pub fn ideal_extents(ranges: &[BlockRange], longest: u64) -> u64 {
    let longest = longest.max(1);
    ranges.iter().map(|r| r.len.div_ceil(longest)).sum()
}

/// Cuts `ranges` at `eof_block`: MOVE_EXT cannot reach past end of file
/// (blocks preallocated beyond it stay where they are).
pub fn clip_to_eof(ranges: &[BlockRange], eof_block: u64) -> Vec<BlockRange> {
    ranges
        .iter()
        .filter(|r| r.start < eof_block)
        .map(|r| BlockRange {
            start: r.start,
            len: r.end().min(eof_block) - r.start,
        })
        .collect()
}

/// The measurements of one file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Assessment {
    pub size_bytes: u64,
    /// As `filefrag` counts them.
    pub extents: u64,
    /// As FIEMAP lists them (e4defrag's figure).
    pub fiemap_entries: u64,
    pub physical_runs: u64,
    pub ideal_extents: u64,
    pub data_ranges: u64,
    pub blocks: u64,
    /// 0 for a file in its ideal shape; towards 100 as more of its extents
    /// are excess: 100 × (extents − ideal) / extents.
    pub score: f64,
}

impl Assessment {
    /// Measures `map`, the map of a file of `size_bytes` on a filesystem
    /// whose longest extent is `longest` blocks.
    pub fn of(map: &ExtentMap, size_bytes: u64, longest: u64) -> Self {
        let extents = map.extent_count();
        let ideal = map.ideal_extents(longest);
        Assessment {
            size_bytes,
            extents,
            fiemap_entries: map.fiemap_entries(),
            physical_runs: map.physical_runs(),
            ideal_extents: ideal,
            data_ranges: map.data_ranges().len() as u64,
            blocks: map.blocks(),
            score: score(extents, ideal),
        }
    }

    /// Every data range is already one physical run: moving cannot help.
    pub fn is_contiguous(&self) -> bool {
        self.physical_runs <= self.data_ranges || self.extents <= self.ideal_extents
    }

    pub fn excess_extents(&self) -> u64 {
        self.extents.saturating_sub(self.ideal_extents)
    }
}

/// 100 × (extents − ideal) / extents, 0 when at or below ideal.
pub fn score(extents: u64, ideal: u64) -> f64 {
    if extents <= ideal || extents == 0 {
        0.0
    } else {
        100.0 * (extents - ideal) as f64 / extents as f64
    }
}

/// e4defrag's idea of the best extent count: one per flex group (or block
/// group) the blocks span, `span` blocks each (`FsInfo::group_blocks`).
pub fn e4defrag_best(blocks: u64, span: u64) -> u64 {
    match blocks.checked_sub(1) {
        None => 0,
        Some(last) => last.checked_div(span).map_or(1, |groups| groups + 1),
    }
}

/// e4defrag -c's "Fragmentation score" over many files, by its own formula,
/// accumulated file by file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct E4defragScore {
    pub extents: u64,
    pub best: u64,
    pub blocks: u64,
}

impl E4defragScore {
    pub fn add(&mut self, extents: u64, best: u64, blocks: u64) {
        self.extents += extents;
        self.best += best;
        self.blocks += blocks;
    }

    /// ratio = (extents − best) × 100 / blocks;
    /// score = ratio > 10 ? 80 + 20 × ratio / 100 : 8 × ratio.
    pub fn score(&self) -> f64 {
        if self.blocks == 0 {
            return 0.0;
        }
        let ratio = (self.extents as f64 - self.best as f64) * 100.0 / self.blocks as f64;
        if ratio > 10.0 {
            80.0 + 20.0 * ratio / 100.0
        } else {
            8.0 * ratio
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ext4's longest extent, the figures below are worked out for.
    const EXT4_LONGEST: u64 = crate::backend::ext4::MAX_EXTENT_BLOCKS;
    use crate::sys::ExtentFlags;

    fn ext(logical: u64, physical: u64, len: u64) -> BlockExtent {
        BlockExtent {
            logical,
            physical,
            len,
        }
    }

    fn map(extents: Vec<BlockExtent>) -> ExtentMap {
        ExtentMap {
            extents,
            problem: None,
        }
    }

    #[test]
    fn contiguous_neighbours_form_one_run() {
        // Split at the 32768-block limit but physically contiguous: one run.
        let m = map(vec![ext(0, 1000, 32768), ext(32768, 33768, 100)]);
        assert_eq!(m.fiemap_entries(), 2);
        assert_eq!(m.extent_count(), 1);
        assert_eq!(m.physical_runs(), 1);
        assert_eq!(m.ideal_extents(EXT4_LONGEST), 2);
        assert!(Assessment::of(&m, 32868 * 4096, EXT4_LONGEST).is_contiguous());
    }

    #[test]
    fn scattered_extents_are_separate_runs() {
        let m = map(vec![
            ext(0, 500, 10),
            ext(10, 100, 10),
            ext(20, 110, 10),
            ext(30, 900, 10),
        ]);
        assert_eq!(m.physical_runs(), 3);
        assert_eq!(m.extent_count(), 3);
        assert_eq!(m.ideal_extents(EXT4_LONGEST), 1);
        let a = Assessment::of(&m, 40 * 4096, EXT4_LONGEST);
        assert!(!a.is_contiguous());
        assert_eq!(a.excess_extents(), 2);
        assert!((a.score - 66.666).abs() < 0.01);
    }

    #[test]
    fn a_hole_matched_by_a_physical_gap_is_one_extent_for_filefrag() {
        let m = map(vec![ext(0, 100, 10), ext(20, 120, 10), ext(40, 500, 10)]);
        assert_eq!(m.extent_count(), 2);
        assert_eq!(m.physical_runs(), 3);
    }

    #[test]
    fn holes_split_data_ranges_and_runs() {
        // Physically adjacent but with a logical hole between: two ranges.
        let m = map(vec![ext(0, 100, 10), ext(20, 110, 10)]);
        assert_eq!(
            m.data_ranges(),
            vec![
                BlockRange { start: 0, len: 10 },
                BlockRange { start: 20, len: 10 }
            ]
        );
        assert_eq!(m.physical_runs(), 2);
        assert_eq!(m.ideal_extents(EXT4_LONGEST), 2);
        assert!(Assessment::of(&m, 30 * 4096, EXT4_LONGEST).is_contiguous());
    }

    #[test]
    fn ideal_counts_max_length_pieces() {
        let r = [
            BlockRange {
                start: 0,
                len: 128_000,
            },
            BlockRange {
                start: 200_000,
                len: 1,
            },
        ];
        assert_eq!(ideal_extents(&r, EXT4_LONGEST), 4 + 1);
    }

    #[test]
    fn runs_within_ranges_cut_extents() {
        let m = map(vec![ext(0, 100, 10), ext(10, 500, 10), ext(20, 510, 10)]);
        assert_eq!(m.physical_runs_in(&[BlockRange { start: 12, len: 18 }]), 1);
        assert_eq!(m.physical_runs_in(&[BlockRange { start: 5, len: 10 }]), 2);
    }

    #[test]
    fn extents_within_ranges_are_counted_as_filefrag_counts_them() {
        // Two data ranges whose hole is matched by a free gap of its size:
        // one extent to filefrag, two physical runs.
        let matched = map(vec![ext(0, 100, 10), ext(20, 120, 10)]);
        let both = [
            BlockRange { start: 0, len: 10 },
            BlockRange { start: 20, len: 10 },
        ];
        assert_eq!(matched.physical_runs_in(&both), 2);
        assert_eq!(matched.extent_count_in(&both), 1);
        assert_eq!(matched.extent_count_in(&both), matched.extent_count());
        // A gap of another size: two.
        let unmatched = map(vec![ext(0, 100, 10), ext(20, 130, 10)]);
        assert_eq!(unmatched.extent_count_in(&both), 2);
        // Only what lies in the ranges counts.
        let m = map(vec![ext(0, 100, 10), ext(10, 500, 10), ext(20, 510, 10)]);
        assert_eq!(m.extent_count_in(&[BlockRange { start: 12, len: 18 }]), 1);
        assert_eq!(m.extent_count_in(&[BlockRange { start: 5, len: 10 }]), 2);
        assert_eq!(m.extent_count_in(&[]), 0);
    }

    #[test]
    fn clipping_at_eof_drops_preallocation_past_it() {
        let r = [
            BlockRange { start: 0, len: 10 },
            BlockRange { start: 20, len: 10 },
        ];
        assert_eq!(
            clip_to_eof(&r, 25),
            vec![
                BlockRange { start: 0, len: 10 },
                BlockRange { start: 20, len: 5 }
            ]
        );
        assert_eq!(clip_to_eof(&r, 5), vec![BlockRange { start: 0, len: 5 }]);
    }

    #[test]
    fn fiemap_bytes_become_blocks_and_flags_become_problems() {
        let raw = [
            Extent {
                logical: 8192,
                physical: 40960,
                length: 4096,
                flags: ExtentFlags::empty(),
            },
            Extent {
                logical: 0,
                physical: 0,
                length: 8192,
                flags: ExtentFlags::DELALLOC,
            },
        ];
        let m = ExtentMap::from_fiemap(&raw, 4096);
        assert_eq!(m.extents[0], ext(0, 0, 2));
        assert_eq!(m.extents[1], ext(2, 10, 1));
        assert_eq!(m.problem, Some(MapProblem::DelayedAllocation));
    }

    #[test]
    fn zero_length_extents_are_kept_but_map_nothing() {
        let raw = [
            Extent {
                logical: 0,
                physical: 4096,
                length: 4096,
                flags: ExtentFlags::empty(),
            },
            Extent {
                logical: 40960,
                physical: 0,
                length: 0,
                flags: ExtentFlags::DATA_INLINE,
            },
        ];
        let m = ExtentMap::from_fiemap(&raw, 4096);
        assert_eq!(m.extents, vec![ext(0, 1, 1), ext(10, 0, 0)]);
        assert_eq!(m.problem, Some(MapProblem::Inline));
        assert_eq!(m.data_ranges(), vec![BlockRange { start: 0, len: 1 }]);
        assert_eq!(m.physical_runs(), 1);
        assert_eq!(m.blocks(), 1);
    }

    #[test]
    fn absurd_values_saturate_and_impossible_maps_are_a_problem() {
        let huge = Extent {
            logical: u64::MAX,
            physical: u64::MAX,
            length: u64::MAX,
            flags: ExtentFlags::empty(),
        };
        let m = ExtentMap::from_fiemap(&[huge, huge], 1);
        assert_eq!(m.problem, Some(MapProblem::UnknownLocation));
        let a = Assessment::of(&m, u64::MAX, EXT4_LONGEST);
        assert_eq!(a.blocks, u64::MAX);
        assert!((0.0..=100.0).contains(&a.score));
        assert_eq!(m.data_ranges().len(), 1);
        // With real blocks, u64's end is reached by no sum: not a problem.
        let m = ExtentMap::from_fiemap(&[huge], 1024);
        assert_eq!(m.problem, None);
        assert_eq!(m.data_ranges()[0].end(), u64::MAX / 1024 + (1 << 54));
        let m = ExtentMap::from_fiemap(&[huge], 0);
        assert_eq!(m.problem, Some(MapProblem::UnknownLocation));
        assert!(m.extents.is_empty());
        // Built by hand, unsorted and at u64's end: figures, not panics.
        let odd = map(vec![ext(u64::MAX, u64::MAX, u64::MAX), ext(5, 0, 1)]);
        let _ = (odd.extent_count(), odd.physical_runs(), odd.data_ranges());
        let all = [BlockRange {
            start: 0,
            len: u64::MAX,
        }];
        assert_eq!(odd.physical_runs_in(&all), 1);
    }

    #[test]
    fn e4defrag_best_and_score_follow_its_formula() {
        assert_eq!(e4defrag_best(0, 32768 * 16), 0);
        assert_eq!(e4defrag_best(1, 32768 * 16), 1);
        assert_eq!(e4defrag_best(32768 * 16 + 1, 32768 * 16), 2);
        assert_eq!(e4defrag_best(32769, 32768), 2);
        assert_eq!(e4defrag_best(32769, 0), 1);
        let mut s = E4defragScore::default();
        s.add(6, 1, 1000); // ratio 0.5 -> 4
        assert!((s.score() - 4.0).abs() < 1e-9);
        s.add(200, 1, 0); // ratio (206-2)*100/1000 = 20.4 -> 84.08
        assert!((s.score() - 84.08).abs() < 1e-9);
        assert_eq!(E4defragScore::default().score(), 0.0);
    }
}
