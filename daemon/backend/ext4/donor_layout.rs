//! How a donor's blocks are asked for: one allocation per data range, or
//! one over the whole span with the holes punched out; each area as the
//! free space model says ext4 serves it best.

use std::os::fd::BorrowedFd;

use super::buddy::{BuddyChunks, Geometry, Plan, Request, NO_NORMALIZE_MAX};
use super::free_space::FreeSpace;
use crate::assess::{ideal_extents, BlockRange, ExtentMap};
use crate::ext4;
use crate::sys::{self, Flush};

/// How the donor's blocks are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DonorLayout {
    /// One allocation per data range.
    PerRange,
    /// One allocation over the whole span, then the holes punched out:
    /// each piece of data lands where the file's logical layout says, so
    /// the file reads as one extent past its holes (filefrag counts it so,
    /// and e4defrag's donor gets the same when ext4's allocator can place
    /// each range after the last as the file's offsets say). Only where
    /// the holes are at most `SPAN_HOLES_PER_DATA` times the data and the
    /// free space holds the whole span for a moment.
    Span,
}

/// A span is allocated where its holes are at most this many times its
/// data. Their blocks are free again once punched, but the data is left
/// spread over an area this much larger than itself; past it, one
/// allocation per range. (A file of 256 KiB pieces, one per MiB, is 3.)
const SPAN_HOLES_PER_DATA: u64 = 4;

impl DonorLayout {
    /// The layout for `ranges`, where `fits(blocks)` says whether the free
    /// space (above the reserve) holds that many blocks.
    pub(super) fn for_ranges(ranges: &[BlockRange], fits: impl FnOnce(u64) -> bool) -> Self {
        let data: u64 = ranges.iter().map(|r| r.len).sum();
        match (ranges.first(), ranges.last()) {
            (Some(first), Some(last))
                if ranges.len() > 1
                    && last.end() - first.start - data <= SPAN_HOLES_PER_DATA * data
                    && fits(last.end() - first.start) =>
            {
                DonorLayout::Span
            }
            _ => DonorLayout::PerRange,
        }
    }

    /// The fewest extents, as filefrag counts them, a donor of this layout
    /// can leave `ranges` in, with extents of at most `longest` blocks: a
    /// span counts as one range.
    pub(super) fn ideal_extents(self, ranges: &[BlockRange], longest: u64) -> u64 {
        ideal_extents(&self.areas(ranges), longest)
    }

    /// The areas allocated, before holes are punched out of a span.
    pub(super) fn areas(self, ranges: &[BlockRange]) -> Vec<BlockRange> {
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
    pub(super) fn allocated_blocks(self, ranges: &[BlockRange], padding: Option<&Geometry>) -> u64 {
        let areas = self.areas(ranges);
        let padding = padding.and_then(|g| areas.iter().map(|a| g.padded(a.len) - a.len).max());
        areas.iter().map(|a| a.len).sum::<u64>() + padding.unwrap_or(0)
    }

    /// Allocates the donor's blocks and returns how many fallocate calls
    /// it took. Knowing nothing of the free space, one call per area; else
    /// each area is asked for the way ext4 serves best (see
    /// `NO_NORMALIZE_MAX`), padded only if `pad`.
    pub(super) fn allocate(
        self,
        donor: BorrowedFd<'_>,
        ranges: &[BlockRange],
        mut free: Option<&mut FreeSpace>,
        pad: bool,
        block_size: u64,
    ) -> sys::Result<usize> {
        let mut file = DonorFile {
            donor,
            block_size,
            calls: 0,
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
                        file.ask(&Request::exact(slice))?;
                        let allows = f.fewest(slice.len).unwrap_or(0).max(1);
                        if file.pieces(slice)? > 2 * allows {
                            file.let_go(slice)?;
                            break;
                        }
                        at = slice.end();
                    }
                    let rest = BlockRange {
                        start: at,
                        len: area.end() - at,
                    };
                    let requests = match rest.len {
                        0 => Vec::new(),
                        _ => f
                            .chunks
                            .fallback(rest, room.saturating_sub(at - area.start)),
                    };
                    match (requests.as_slice(), f.fewest(rest.len)) {
                        ([windowed], Some(allows)) if windowed.allocate.len > NO_NORMALIZE_MAX => {
                            let ask = Rest { area: rest, allows };
                            ask.in_windows_else_chunks(windowed, &mut f.chunks, &mut file)?;
                            Vec::new()
                        }
                        _ => requests,
                    }
                }
            };
            for r in &requests {
                file.ask(r)?;
            }
        }
        if self == DonorLayout::Span {
            for pair in ranges.windows(2) {
                let hole = pair[1].start - pair[0].end();
                sys::punch_hole(donor, pair[0].end() * block_size, hole * block_size)?;
            }
        }
        Ok(file.calls)
    }
}

/// What is left of a large area after its plain tries, to be asked for
/// in normalized windows.
struct Rest {
    area: BlockRange,
    /// The fewest pieces the free space would hold it in.
    allows: u64,
}

impl Rest {
    /// Asks for the area in `windowed`. Served in normalized windows, it
    /// follows long free runs where there are some; where the free space
    /// between them is in scraps, the windows can come back in scraps too
    /// (measured on 6.18: 500 MiB in 147 pieces where the largest free
    /// runs would hold it in 12; in the largest free chunks, 29). Then in
    /// those, kept only if better: elsewhere they were worse (25 pieces in
    /// windows, 30 in chunks).
    fn in_windows_else_chunks(
        &self,
        windowed: &Request,
        chunks: &mut BuddyChunks,
        donor: &mut impl AskedArea,
    ) -> sys::Result<()> {
        let area = self.area;
        donor.ask(windowed)?;
        let in_windows = donor.pieces(area)?;
        if in_windows <= 2 * self.allows {
            return Ok(());
        }
        donor.let_go(area)?;
        for piece in chunks.pieces(area) {
            donor.ask(&Request::exact(piece))?;
        }
        let in_chunks = donor.pieces(area)?;
        tracing::debug!(
            "{} blocks came back in {in_windows} pieces in windows, {in_chunks} in free chunks",
            area.len
        );
        if in_chunks > in_windows {
            donor.let_go(area)?;
            donor.ask(windowed)?;
        }
        Ok(())
    }
}

/// An area of the donor as a retry sees it: asked for, counted in pieces,
/// let go. The donor file in the service; a script in the tests, so that
/// what is kept can be checked without free space that scatters windows
/// (which takes a minute to make, and not every time).
trait AskedArea {
    fn ask(&mut self, request: &Request) -> sys::Result<()>;
    /// The physical runs `area` lies in.
    fn pieces(&mut self, area: BlockRange) -> sys::Result<u64>;
    fn let_go(&mut self, area: BlockRange) -> sys::Result<()>;
}

/// The donor file, counting its fallocate calls.
struct DonorFile<'a> {
    donor: BorrowedFd<'a>,
    block_size: u64,
    calls: usize,
}

impl AskedArea for DonorFile<'_> {
    fn ask(&mut self, request: &Request) -> sys::Result<()> {
        let bytes = |blocks: u64| blocks * self.block_size;
        self.calls += 1;
        let a = request.allocate;
        sys::allocate(self.donor, bytes(a.start), bytes(a.len))?;
        // At once, so that the padding of one request at a time is held
        // (statfs counts punched blocks free right away).
        match request.trim {
            Some(t) => sys::punch_hole(self.donor, bytes(t.start), bytes(t.len)),
            None => Ok(()),
        }
    }

    fn pieces(&mut self, area: BlockRange) -> sys::Result<u64> {
        runs_in(self.donor, area, self.block_size)
    }

    fn let_go(&mut self, area: BlockRange) -> sys::Result<()> {
        let_go(self.donor, area, self.block_size)
    }
}

/// The physical runs `area` of the donor lies in.
fn runs_in(donor: BorrowedFd<'_>, area: BlockRange, block_size: u64) -> sys::Result<u64> {
    let raw = sys::fiemap(donor, Flush::No)?;
    Ok(ExtentMap::from_fiemap(&raw, block_size).physical_runs_in(&[area]))
}

/// Punches `area` out of the donor and commits, so that its blocks are
/// free for the allocator again.
pub(super) fn let_go(donor: BorrowedFd<'_>, area: BlockRange, block_size: u64) -> sys::Result<()> {
    sys::punch_hole(donor, area.start * block_size, area.len * block_size)?;
    ext4::commit_journal(donor)
}

#[cfg(test)]
mod tests {
    use super::super::buddy::testing::*;
    use super::super::buddy::BuddyChunks;
    use super::*;

    #[test]
    fn sparse_files_get_a_span_only_when_holes_are_small() {
        let r = |start, len| BlockRange { start, len };
        let room = |_| true;
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10)], room),
            DonorLayout::PerRange
        );
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10), r(15, 10)], room),
            DonorLayout::Span
        );
        // Pieces of 256 KiB, one per MiB, as a file written sparsely.
        let sparse: Vec<BlockRange> = (0..48).map(|i| r(i * 256, 64)).collect();
        assert_eq!(DonorLayout::for_ranges(&sparse, room), DonorLayout::Span);
        assert_eq!(DonorLayout::Span.ideal_extents(&sparse, 32768), 1);
        assert_eq!(DonorLayout::PerRange.ideal_extents(&sparse, 32768), 48);
        // ... unless the free space cannot hold the span for a moment.
        let mut asked = 0;
        assert_eq!(
            DonorLayout::for_ranges(&sparse, |blocks| {
                asked = blocks;
                false
            }),
            DonorLayout::PerRange
        );
        assert_eq!(asked, 47 * 256 + 64);
        assert_eq!(
            DonorLayout::allocated_blocks(DonorLayout::Span, &[r(0, 10), r(15, 10)], None),
            25
        );
        assert_eq!(
            DonorLayout::for_ranges(&[r(0, 10), r(100, 10)], room),
            DonorLayout::PerRange
        );
        assert_eq!(
            DonorLayout::allocated_blocks(DonorLayout::PerRange, &[r(0, 10), r(100, 10)], None),
            20
        );
    }

    /// A donor that comes back in the pieces a script says, one figure
    /// per count, recording what was asked of it.
    struct Scripted {
        pieces: Vec<u64>,
        counted: usize,
        calls: Vec<Call>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Call {
        Ask(BlockRange),
        LetGo(BlockRange),
    }

    impl AskedArea for Scripted {
        fn ask(&mut self, request: &Request) -> sys::Result<()> {
            self.calls.push(Call::Ask(request.allocate));
            Ok(())
        }

        fn pieces(&mut self, _area: BlockRange) -> sys::Result<u64> {
            self.counted += 1;
            Ok(self.pieces[self.counted - 1])
        }

        fn let_go(&mut self, area: BlockRange) -> sys::Result<()> {
            self.calls.push(Call::LetGo(area));
            Ok(())
        }
    }

    /// The retry on a 500 MiB area (128,000 blocks) where the free space
    /// allows 12, the donor coming back in `pieces` at each count: what
    /// was asked of it, in order, and how many counts were made.
    fn retry(pieces: &[u64]) -> (Vec<Call>, usize) {
        // Two free 32 MiB chunks and a hundred of 8 MiB.
        let mut free = chunks(&[(13, 2), (11, 100)]);
        let mut donor = Scripted {
            pieces: pieces.to_vec(),
            counted: 0,
            calls: Vec::new(),
        };
        let rest = Rest {
            area: AREA,
            allows: 12,
        };
        rest.in_windows_else_chunks(&Request::exact(AREA), &mut free, &mut donor)
            .expect("a script does not fail");
        (donor.calls, donor.counted)
    }

    const AREA: BlockRange = BlockRange {
        start: 0,
        len: 128_000,
    };

    #[test]
    fn windows_in_scraps_are_asked_for_again_in_free_chunks_kept_only_if_better() {
        use Call::*;
        // In at most twice what the free space allows: kept as they came.
        assert_eq!(retry(&[24]), (vec![Ask(AREA)], 1));
        // In scraps (147 pieces, as measured): let go, then asked for in
        // the largest free chunks, one request each, largest first, over
        // the whole area; kept, being better.
        let (calls, counts) = retry(&[147, 29]);
        assert_eq!(counts, 2);
        assert_eq!(calls[..2], [Ask(AREA), LetGo(AREA)]);
        let chunks: Vec<BlockRange> = calls[2..]
            .iter()
            .map(|c| match c {
                Ask(piece) => *piece,
                LetGo(_) => panic!("chunks better than windows are kept: {calls:?}"),
            })
            .collect();
        assert_eq!(chunks[..3], [r(0, 8192), r(8192, 8192), r(16384, 2048)]);
        assert!(chunks
            .windows(2)
            .all(|w| w[0].end() == w[1].start && w[0].len >= w[1].len));
        assert_eq!(chunks.last().map(|c| c.end()), Some(AREA.end()));
        // Chunks worse than the windows: let go, and the windows again.
        let (calls, counts) = retry(&[30, 40]);
        assert_eq!(counts, 2);
        assert_eq!(calls[calls.len() - 2..], [LetGo(AREA), Ask(AREA)]);
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
}
