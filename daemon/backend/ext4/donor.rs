//! The donor strategy: build a donor over exactly the file's data ranges
//! (holes stay holes); when it is over ideal and over what the free
//! space allows, build one guided by the free space map, beside it where
//! there is room for both, in its place where it is in scraps; keep the
//! better. A move goes ahead only with a donor in fewer pieces than the
//! file.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::buddy::Geometry;
use super::donor_layout::DonorLayout;
use super::free_space::{index_block_groups, FreeSpace};
use super::relocate;
use crate::assess::{BlockRange, ExtentMap};
use crate::backend::Inspected;
use crate::backend::{check_free_space, RelocateFailed};
use crate::ext4;
use crate::outcome::{FailReason, Refusal};
use crate::plan::Chunk;
use crate::sys::{self, Flush};
use crate::target::Target;

/// A donor built for one move, and the extents (as filefrag counts them)
/// its blocks lie in over the file's ranges.
#[derive(Debug)]
pub struct Donor {
    fd: OwnedFd,
    extents: u64,
}

impl Donor {
    /// The best donor the free space allows for `ranges` of `inspected`,
    /// within the reserve. With `commit_first`, the journal is committed
    /// first, so that blocks freed a moment ago (a move stopped or crashed,
    /// an earlier round) are free for the allocator.
    pub fn build(
        target: &Target,
        inspected: &Inspected,
        ranges: &[BlockRange],
        reserve_percent: f64,
        commit_first: bool,
    ) -> Result<Donor, Refusal> {
        let block_size = inspected.fs.block_size;
        let need = super::space_needed(ranges, block_size);
        let (fd, extents) = best_donor(
            target,
            inspected,
            ranges,
            need,
            reserve_percent,
            commit_first,
        )?;
        Ok(Donor { fd, extents })
    }

    pub fn extents(&self) -> u64 {
        self.extents
    }

    /// Moves `chunk` of `file` into the donor's blocks.
    pub fn relocate(
        &self,
        file: BorrowedFd<'_>,
        chunk: &Chunk,
        block_size: u64,
    ) -> Result<u64, RelocateFailed> {
        relocate::move_chunk(file, self.fd.as_fd(), chunk, block_size).map_err(|failure| {
            RelocateFailed {
                moved_blocks: failure.moved_blocks,
                error: failure.error.into(),
            }
        })
    }

    /// Commits the moves so far (see `relocate::commit`).
    pub fn make_durable(&self, file: BorrowedFd<'_>) -> sys::Result<()> {
        relocate::commit(file, self.fd.as_fd())
    }
}

/// Builds a donor over `ranges` and, when it is over ideal and over
/// what the free space allows, one more guided by the free space map;
/// keeps the better. Its extents over `ranges` with it, as filefrag will
/// count the file's after the move (so that a donor whose pieces keep the
/// file's holes as gaps of their size counts as the one extent it is).
fn best_donor(
    target: &Target,
    inspected: &Inspected,
    ranges: &[BlockRange],
    need: u64,
    reserve_percent: f64,
    commit_first: bool,
) -> Result<(OwnedFd, u64), Refusal> {
    let block_size = inspected.fs.block_size;
    let layout = DonorLayout::for_ranges(ranges, |blocks| {
        check_free_space(
            inspected.file.as_fd(),
            blocks.saturating_mul(block_size),
            reserve_percent,
        )
        .is_ok()
    });
    let ideal = layout.ideal_extents(ranges, inspected.fs.max_extent_blocks);
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
    // The first donor is what ext4 gives a plain fallocate, as e4defrag's
    // is, but from an allocator that sees all of the free space (see
    // `index_block_groups`): on a fresh mount, 12 extents where e4defrag
    // got 84 in 7 runs of 9 and 12 in the other 2.
    index_block_groups(inspected);
    let (mut donor, mut donor_extents) = build(false)?;
    if donor_extents <= ideal.max(1) {
        return Ok((donor, donor_extents));
    }
    let bar = fewest_possible(inspected, donor.as_fd(), ranges).map_or(ideal, |f| f.max(ideal));
    let room_for_two = || check_free_space(inspected.file.as_fd(), need, reserve_percent).is_ok();
    let second = second_donor(donor_extents, bar, room_for_two);
    if second == Second::None {
        if donor_extents > bar {
            tracing::debug!(
                "the plain donor has {donor_extents} extents, at most twice the {bar} the free \
                 space allows: kept (no room for a second one beside it)"
            );
        }
        return Ok((donor, donor_extents));
    }
    let whole = BlockRange {
        start: 0,
        len: ranges.last().map_or(0, |r| r.end()),
    };
    let let_go = |donor: &OwnedFd| -> Result<(), Refusal> {
        Ok(super::donor_layout::let_go(
            donor.as_fd(),
            whole,
            block_size,
        )?)
    };
    if second == Second::Beside {
        match build(true) {
            Ok((guided, guided_extents)) if guided_extents < donor_extents => {
                let_go(&donor)?;
                return Ok((guided, guided_extents));
            }
            Ok((guided, guided_extents)) => {
                tracing::debug!(
                    "the guided donor beside the plain one has {guided_extents} extents, \
                     the plain one {donor_extents}: a guided one in its place"
                );
                let_go(&guided)?;
            }
            // No room after all (another writer took it): as with no
            // room from the start.
            Err(e) if second_donor(donor_extents, bar, || false) == Second::None => {
                tracing::debug!(
                    "no guided donor beside the plain one ({e:?}): the plain one is kept"
                );
                return Ok((donor, donor_extents));
            }
            Err(e) => {
                tracing::debug!(
                    "no guided donor beside the plain one ({e:?}), which is in scraps: \
                     a guided one in its place"
                );
            }
        }
    }
    // In scraps, or with room to spare and the guided one beside it no
    // better: let the first go, commit, and make another one guided by
    // the free space map. The commit helps: blocks freed by a move (or by
    // the first donor) only become free for the allocator once the
    // journal commits, so a move right after another one (a resumed job,
    // the next file) gets scattered space.
    let first = donor_extents;
    let_go(&donor)?;
    (donor, donor_extents) = match build(true) {
        Ok(second) => second,
        Err(_) => build(false)?,
    };
    // The map says what is free, not where fallocate will look: the
    // guided donor came out worse than the plain one in about one
    // resumed job in six (95 pieces against 29). Never keep a worse
    // one: make a plain one again.
    if donor_extents > first {
        tracing::debug!(
            "the guided donor has {donor_extents} extents, the plain one had {first}: a plain one again"
        );
        let guided = donor_extents;
        let_go(&donor)?;
        (donor, donor_extents) = build(false)?;
        // A plain donor made again need not find the space the first
        // one had (seen in CI: 4 runs, guided 5, plain again 230, on a
        // resumed job): then the guided one, whose map makes it come
        // out much the same each time, is the better bet.
        if donor_extents > guided {
            tracing::debug!(
                "the plain donor made again has {donor_extents} extents: a guided one again"
            );
            let_go(&donor)?;
            (donor, donor_extents) = build(true)?;
        }
    }
    Ok((donor, donor_extents))
}

/// Whether a second donor is made after a plain one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Second {
    /// The plain one is kept.
    None,
    /// A guided one is made beside it and kept if better; if not, one in
    /// its place.
    Beside,
    /// The plain one is let go and a guided one made in its place.
    Instead,
}

/// Whether to make a second donor after a plain one of `first` extents,
/// where `bar` is the ideal or, if more, what the free space allows. Only
/// when the first is over the bar: not only past twice the ideal (a 200
/// MiB file whose plain donor came out in 4 extents was left in 4 where
/// e4defrag left 3 to 5; the guided one is in 2, the ideal, for about
/// 2 ms more).
///
/// Beside the first where the free space holds two (`room_for_two`),
/// planned on the space the first leaves: kept if better (a 128 MiB file
/// on a 1 GiB image, 6 extents plain, 3 beside). If not, the first may
/// hold part of the best free run, and is let go for a guided one in its
/// place, with the same fallbacks as where it is in scraps: kept, it left
/// a 128 MiB file in 2 extents in CI where e4defrag left 1.
///
/// With no room for two, letting the first go is a bet (made again, it
/// need not find the space it had: a plain donor of 12 extents, let go
/// for a guided one of 13, came back in 13; on another image 23, 25, 25).
/// On 10 images of tight free space, the guided donor made after it was
/// better on 3 (by 1 to 3 extents), worse on 2 (by 1 and 2) and the same
/// on 4, the first made again no better. It pays only where the first is
/// in scraps, more than twice the bar (147 extents where the free space
/// allows 12: guided, 29).
fn second_donor(first: u64, bar: u64, room_for_two: impl FnOnce() -> bool) -> Second {
    if first <= bar {
        Second::None
    } else if room_for_two() {
        Second::Beside
    } else if first <= 2 * bar {
        Second::None
    } else {
        Second::Instead
    }
}

/// The fewest extents any donor for `ranges` could have, with the blocks
/// of `donor` counted free; None when the free space map cannot say
/// (no GETFSMAP, or free space too scattered to count). Reading the map
/// also helps the next donor along (see `FreeSpace`).
fn fewest_possible(
    inspected: &Inspected,
    donor: BorrowedFd<'_>,
    ranges: &[BlockRange],
) -> Option<u64> {
    let block_size = inspected.fs.block_size;
    let raw = sys::fiemap(donor, Flush::No).ok()?;
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
    FreeSpace::read(inspected, data, &held).and_then(|f| f.fewest(data))
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
/// its extents there.
fn build_donor(
    target: &Target,
    inspected: &Inspected,
    layout: DonorLayout,
    ranges: &[BlockRange],
    need: u64,
    reserve_percent: f64,
    how: Build,
) -> Result<(OwnedFd, u64), Refusal> {
    let block_size = inspected.fs.block_size;
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
    let geometry = Geometry::of(super::superblock(&inspected.fs)?);
    let padded_need = layout.allocated_blocks(ranges, Some(&geometry)) * block_size;
    let pad = check_free_space(inspected.file.as_fd(), padded_need, reserve_percent).is_ok();
    let calls = layout
        .allocate(donor.as_fd(), ranges, free.as_mut(), pad, block_size)
        .map_err(|e| match e {
            // Another writer took the space since the check: say how much is left.
            sys::Error::NoSpace => {
                match check_free_space(inspected.file.as_fd(), need, reserve_percent) {
                    Err(refusal) => refusal,
                    Ok(()) => Refusal::Fail(sys::Error::NoSpace.into()),
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
    let extents = donor_map.extent_count_in(ranges);
    let allows = free.and_then(|f| f.fewest(data));
    tracing::debug!(
        "donor: {extents} extents ({} physical runs) in {calls} fallocate calls, {layout:?} \
         (ideal {}{})",
        donor_map.physical_runs_in(ranges),
        layout.ideal_extents(ranges, inspected.fs.max_extent_blocks),
        allows.map_or(String::new(), |n| format!(", the free space allows {n}")),
    );
    Ok((donor, extents))
}

#[cfg(test)]
mod tests {
    use super::{second_donor, Second};

    #[test]
    fn a_plain_donor_is_let_go_only_for_a_better_one_or_when_in_scraps() {
        let room = || true;
        let no_room = || false;
        // At or under the bar: kept, and the room is not even looked at.
        assert_eq!(second_donor(7, 7, || unreachable!()), Second::None);
        assert_eq!(second_donor(1, 4, || unreachable!()), Second::None);
        // Over it with room for two: a guided one beside it.
        assert_eq!(second_donor(8, 7, room), Second::Beside);
        assert_eq!(second_donor(147, 12, room), Second::Beside);
        // Over it with no room: kept up to twice the bar, let go past it.
        assert_eq!(second_donor(14, 7, no_room), Second::None);
        assert_eq!(second_donor(15, 7, no_room), Second::Instead);
        assert_eq!(second_donor(147, 12, no_room), Second::Instead);
    }
}
