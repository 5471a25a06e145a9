//! Whether a finished move may be called a success: the whole file, as it
//! is at the end (what a writer appended meanwhile included), against the
//! whole file as it was at the start. A pure decision over two layouts,
//! and the measurement that feeds it.

use std::os::fd::BorrowedFd;

use crate::assess::{Assessment, ExtentMap};
use crate::backend::Backend;
use crate::outcome::{FailReason, Placement, Size};
use crate::sys::{self, Flush};

/// The file at the end of a move.
pub(super) struct Measured {
    pub map: ExtentMap,
    pub assessment: Assessment,
}

/// Measures the file as the start was measured: its size, then fdatasync
/// (so that what was written before has its blocks), then its map. Data a
/// writer added after the fdatasync has no blocks yet and no place to
/// count: it is left out, as it would have been at the start.
pub(super) fn measure(
    file: BorrowedFd<'_>,
    backend: Backend,
    block_size: u64,
    longest: u64,
) -> sys::Result<Measured> {
    let size = u64::try_from(sys::stat(file)?.st_size).unwrap_or(0);
    sys::sync_data(file)?;
    let raw: Vec<sys::Extent> = sys::fiemap(file, Flush::No)?
        .into_iter()
        .filter(|e| !e.flags.is_delalloc())
        .collect();
    let map = backend.extent_map(&raw, block_size);
    let assessment = Assessment::of(&map, size, longest);
    Ok(Measured { map, assessment })
}

/// What a move is judged on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layouts<'a> {
    /// The whole file at the start of the move.
    pub before: &'a Assessment,
    /// The whole file at the end, appended data included.
    pub after: &'a Assessment,
    /// Physical runs of the planned ranges at the start and at the end.
    pub planned_before: u64,
    pub planned_after: u64,
    /// Who chose where the moved data went.
    pub placed_by: Placement,
}

/// A success only when the planned part got better and the whole file
/// ended in fewer extents than it had at the start. Otherwise the reason:
/// a writer that appended faster than its tail could be moved, or no
/// gain, put down to whoever placed the data (a checked donor: another
/// writer took the free space; btrfs: its allocator).
pub(super) fn judge(l: &Layouts<'_>) -> Result<(), FailReason> {
    if l.planned_after >= l.planned_before {
        return Err(FailReason::NoImprovement {
            before: l.planned_before,
            after: l.planned_after,
            placed_by: l.placed_by,
        });
    }
    if l.after.extents < l.before.extents {
        return Ok(());
    }
    match l.after.size_bytes.saturating_sub(l.before.size_bytes) {
        0 => Err(FailReason::NoImprovement {
            before: l.before.extents,
            after: l.after.extents,
            placed_by: l.placed_by,
        }),
        appended => Err(FailReason::WriterOutpaced {
            before: l.before.extents,
            after: l.after.extents,
            appended: Size(appended),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size_mib: u64, extents: u64) -> Assessment {
        Assessment {
            size_bytes: size_mib << 20,
            extents,
            fiemap_entries: extents,
            physical_runs: extents,
            ideal_extents: 1,
            data_ranges: 1,
            blocks: size_mib << 8,
            score: crate::assess::score(extents, 1),
        }
    }

    fn judged(
        before: Assessment,
        after: Assessment,
        planned: (u64, u64),
    ) -> Result<(), FailReason> {
        judge(&Layouts {
            before: &before,
            after: &after,
            planned_before: planned.0,
            planned_after: planned.1,
            placed_by: Placement::CheckedDonor,
        })
    }

    #[test]
    fn fewer_extents_for_the_whole_file_is_a_success() {
        assert_eq!(judged(file(96, 96), file(96, 2), (96, 1)), Ok(()));
        // Grown meanwhile, its tail moved too: still fewer in all.
        assert_eq!(judged(file(96, 96), file(100, 3), (96, 1)), Ok(()));
    }

    #[test]
    fn a_tail_that_ends_worse_than_the_start_is_the_writer_s_not_a_success() {
        // Issue 12: the planned part went from 96 runs to 1, the tail
        // appended meanwhile landed in 190 pieces.
        assert_eq!(
            judged(file(96, 96), file(104, 191), (96, 1)),
            Err(FailReason::WriterOutpaced {
                before: 96,
                after: 191,
                appended: Size(8 << 20),
            })
        );
        // As many as before is not better either.
        assert!(matches!(
            judged(file(96, 96), file(97, 96), (96, 1)),
            Err(FailReason::WriterOutpaced { .. })
        ));
    }

    #[test]
    fn no_gain_without_a_writer_appending_is_no_improvement() {
        assert_eq!(
            judged(file(96, 40), file(96, 40), (40, 3)),
            Err(FailReason::NoImprovement {
                before: 40,
                after: 40,
                placed_by: Placement::CheckedDonor,
            })
        );
        // The planned part itself no better: whatever the rest did.
        assert_eq!(
            judged(file(96, 40), file(100, 30), (40, 40)),
            Err(FailReason::NoImprovement {
                before: 40,
                after: 40,
                placed_by: Placement::CheckedDonor,
            })
        );
    }

    #[test]
    fn no_gain_is_put_down_to_whoever_placed_the_data() {
        let no_gain = |placed_by| {
            judge(&Layouts {
                before: &file(128, 3),
                after: &file(128, 3),
                planned_before: 2,
                planned_after: 2,
                placed_by,
            })
            .expect_err("no gain")
        };
        // ext4 and XFS check the donor before the swap: something else
        // changed the file or its free space.
        let donor = no_gain(Placement::CheckedDonor);
        assert!(donor.to_string().contains("another writer"), "{donor}");
        // btrfs: the kernel rewrote the data wherever its allocator chose,
        // with no other writer needed (seen on an idle test image).
        let allocator = no_gain(Placement::Allocator);
        let text = allocator.to_string();
        assert!(!text.contains("another writer"), "{text}");
        for part in ["2 -> 2 pieces", "allocator", "intact"] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert_eq!(allocator.code(), donor.code(), "one reason code for both");
    }

    #[test]
    fn the_message_says_what_happened_and_that_the_data_is_intact() {
        let reason = FailReason::WriterOutpaced {
            before: 96,
            after: 191,
            appended: Size(8 << 20),
        };
        let text = reason.to_string();
        for part in ["8.00 MiB", "191 extents", "96 before", "intact", "quiet"] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert_eq!(reason.code(), "writer_outpaced");
    }
}
