//! What the backend seam asks of btrfs: probing a filesystem, refusing
//! one or a file, narrowing the mover's planned ranges to the selection's
//! targets (only unshared ranges worth it), the map a file is judged by,
//! and the relocation (DEFRAG_RANGE chunk by chunk, fsync to commit).
//! The decisions themselves are in `ranges` and `eligibility`.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use super::eligibility::{compression_for, refuse_selection, refuse_unmovable, FileFacts};
use super::ranges::{pieces, select, Selection, Target};
use super::relocate::BtrfsDefrag;
use super::{max_extent_blocks, DEFAULT_EXTENT_THRESH};
use crate::assess::{BlockRange, ExtentMap};
use crate::backend::Inspected;
use crate::btrfs::BtrfsInfo;
use crate::filesystem::{find_mount, FsDetail, FsError, FsInfo, FsUuid};
use crate::outcome::{Refusal, SkipReason};
use crate::sys::{self, Extent, ExtentFlags, Flush};

/// What the operator decides for btrfs (config `[policy]`): how long an
/// extent must be to be left alone, and whether nodatacow files may be
/// rewritten (once, copy-on-write: they lose nothing but their in-place
/// writes until the next write makes them nodatacow again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Bytes; what `btrfs filesystem defragment -t` takes.
    pub extent_thresh: u32,
    pub allow_nocow: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            extent_thresh: DEFAULT_EXTENT_THRESH,
            allow_nocow: false,
        }
    }
}

/// A btrfs filesystem's own facts, and the policy it is worked under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtrfsDetail {
    pub info: BtrfsInfo,
    pub policy: Policy,
}

/// Probes the btrfs filesystem `fd` lives on: BTRFS_IOC_FS_INFO through a
/// reopened fd (the ioctl needs an open file; callers probe through O_PATH
/// pins) and the mount `fd` was opened through. `dev` is the st_dev of
/// the subvolume `fd` is in: each subvolume is probed on its own.
pub fn probe(fd: BorrowedFd<'_>) -> Result<FsInfo, FsError> {
    let mount = find_mount(fd)?;
    let readable = sys::reopen(fd, sys::Access::ReadOnly)?;
    let info = crate::btrfs::fs_info(readable.as_fd())?;
    let block_size = u64::from(info.sectorsize.max(1));
    Ok(FsInfo {
        dev: mount.dev,
        device: PathBuf::from(mount.source.clone().unwrap_or_default()),
        block_size,
        uuid: FsUuid(info.fsid),
        read_only: mount.read_only,
        dax: false,
        max_extent_blocks: max_extent_blocks(block_size),
        mount_point: mount.mount_point,
        detail: FsDetail::Btrfs(BtrfsDetail {
            info,
            policy: Policy::default(),
        }),
    })
}

/// Why no file on the btrfs filesystem `info` describes can be moved:
/// mounted read-only.
pub fn refuse_filesystem(info: &FsInfo) -> Result<(), SkipReason> {
    if info.read_only {
        return Err(SkipReason::ReadOnly);
    }
    Ok(())
}

/// The policy `fs` is worked under.
pub fn policy(fs: &FsInfo) -> Policy {
    match &fs.detail {
        FsDetail::Btrfs(detail) => detail.policy,
        _ => Policy::default(),
    }
}

/// Why `inspected`, a file on btrfs, cannot be moved: its filesystem,
/// then its subvolume, flags and use (see `eligibility`).
pub fn refuse_inspected(inspected: &Inspected) -> Result<(), SkipReason> {
    refuse_filesystem(&inspected.fs)?;
    let facts = facts(inspected)?;
    refuse_unmovable(&facts, policy(&inspected.fs).allow_nocow)
}

fn facts(inspected: &Inspected) -> Result<FileFacts, SkipReason> {
    // `inspected.file` is read-only: a read lease on it tells whether
    // anyone writes the file.
    FileFacts::probe(inspected.file.as_fd(), inspected.fs.read_only).map_err(|e| {
        SkipReason::Busy(format!(
            "its btrfs properties could not be read ({e}); trying again later"
        ))
    })
}

/// The map a file on btrfs is measured by: FIEMAP's, with each row of
/// compressed extents that follow each other on disk counted as the one
/// piece it is (btrfs stores compressed data in extents of at most
/// 128 KiB of file, so a compressed file in one place is hundreds of
/// them). Compressed extents are no unknown location on btrfs: their
/// disk address is real, only their length on disk is smaller.
pub fn extent_map(raw: &[Extent], block_size: u64) -> ExtentMap {
    let bs = block_size.max(1);
    // In the order `pieces` takes them, so that each piece's first extent
    // is the one after the previous piece's last.
    let mut sorted: Vec<Extent> = raw.iter().filter(|e| e.length > 0).copied().collect();
    sorted.sort_by_key(|e| e.logical);
    // Each piece becomes one extent; its logical and physical start are
    // its first extent's, so that pieces that are not contiguous stay
    // apart and a piece counts once.
    let mut out: Vec<Extent> = Vec::with_capacity(sorted.len());
    let mut next = 0usize;
    for piece in pieces(&sorted) {
        let Some(first) = sorted.get(next) else {
            break;
        };
        next = next.saturating_add(usize::try_from(piece.extents).unwrap_or(usize::MAX));
        out.push(Extent {
            logical: piece.start,
            physical: first.physical,
            length: piece.len,
            flags: first.flags.difference(ExtentFlags::ENCODED),
        });
    }
    ExtentMap::from_fiemap(&out, bs)
}

/// The selection of the file mapped as `extents` (unshared ranges worth
/// defragmenting, under the policy's threshold) within `ranges` (the
/// mover's planned ranges: its data up to the end of file, from where a
/// resumed job starts).
fn selection_within(
    extents: &[Extent],
    block_size: u64,
    policy: Policy,
    ranges: &[BlockRange],
) -> Selection {
    let whole = select(extents, block_size, u64::from(policy.extent_thresh));
    restrict(&whole, ranges)
}

/// `selection` with its targets cut to `ranges`.
fn restrict(selection: &Selection, ranges: &[BlockRange]) -> Selection {
    let targets: Vec<Target> = selection
        .targets
        .iter()
        .flat_map(|t| {
            ranges.iter().filter_map(move |r| {
                let start = r.start.max(t.range.start);
                let end = r.end().min(t.range.end());
                (start < end).then(|| Target {
                    range: BlockRange {
                        start,
                        len: end - start,
                    },
                    ..*t
                })
            })
        })
        .collect();
    Selection {
        targets,
        ..selection.clone()
    }
}

/// The mover's planned `ranges` narrowed to what btrfs defragments: the
/// selection's targets, shared extents left out. A job starting at block
/// 0 with nothing to do is refused with the reason (shared extents only,
/// or nothing worth it); a resumed one gets what is left (maybe nothing),
/// and the mover decides.
pub fn narrow_ranges(
    inspected: &Inspected,
    ranges: &[BlockRange],
    resume_at: u64,
) -> Result<Vec<BlockRange>, Refusal> {
    let fs = &inspected.fs;
    // The map `inspect` read a moment ago: mapping the file again here
    // cost 3-4 ms per 128 MiB in 2,048 extents (a fifth of the time
    // before the first chunk). `relocation` maps it afresh.
    let selection = selection_within(&inspected.extents, fs.block_size, policy(fs), ranges);
    if resume_at == 0 {
        refuse_selection(&selection, inspected.assessment.ideal_extents)?;
    }
    if !selection.targets.is_empty() && selection.shared_bytes > 0 {
        tracing::debug!(
            "inode {}: {} in shared extents left as they are",
            inspected.ino,
            crate::outcome::Size(selection.shared_bytes)
        );
    }
    Ok(selection.ranges())
}

/// The defragmentation of `ranges` of `inspected` (narrowed already), with
/// the policy's threshold and the file's compression for compressed
/// targets; too little free space as btrfs counts it is refused here.
pub fn relocation(
    inspected: &Inspected,
    ranges: &[BlockRange],
    reserve_percent: f64,
) -> Result<BtrfsDefrag, Refusal> {
    let fs = &inspected.fs;
    let policy = policy(fs);
    let file = inspected.file.as_fd();
    // Mapped afresh: the supervisor may have waited long for a quiet disk
    // since `inspect`, and a snapshot taken meanwhile shares extents.
    let raw = sys::fiemap(file, Flush::No)?;
    let selection = selection_within(&raw, fs.block_size, policy, ranges);
    let compression = if selection.has_compressed() {
        Some(compression_for(&facts(inspected)?)?)
    } else {
        None
    };
    // btrfs' statfs is its own count: it adds the space not yet
    // allocated to chunks (divided by the data profile's copies), which
    // BTRFS_IOC_SPACE_INFO leaves out, and says none is available when
    // metadata could not take the global reserve, the condition in which
    // a rewrite fails with ENOSPC. A rewrite's old extents are freed only
    // at the next commit, so every byte rewritten is needed.
    crate::backend::check_free_space(
        file,
        super::space_needed(&selection, fs.block_size),
        reserve_percent,
    )?;
    Ok(BtrfsDefrag::new(
        &selection,
        policy.extent_thresh,
        compression,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::btrfs::test_maps::{ext, K, PLAIN};

    #[test]
    fn a_row_of_compressed_extents_in_one_place_is_one_extent_and_no_problem() {
        // 8 compressed extents of 128 KiB of file, each in 16 KiB of disk,
        // one after the other; then 2 more elsewhere.
        let mut raw: Vec<Extent> = (0..8)
            .map(|i| {
                ext(
                    i * 128 * K,
                    (1000 + 16 * i) * K,
                    128 * K,
                    ExtentFlags::ENCODED,
                )
            })
            .collect();
        raw.push(ext(1024 * K, 9000 * K, 128 * K, ExtentFlags::ENCODED));
        raw.push(ext(1152 * K, 5000 * K, 128 * K, ExtentFlags::ENCODED));
        let map = extent_map(&raw, 4096);
        assert_eq!(map.problem, None);
        assert_eq!(map.extent_count(), 3);
        assert_eq!(map.blocks(), 1280 * K / 4096);
        // Plain extents keep FIEMAP's physical layout.
        let plain = [
            ext(0, 4096 * K, 64 * K, PLAIN),
            ext(64 * K, 4160 * K, 64 * K, PLAIN),
        ];
        assert_eq!(extent_map(&plain, 4096).extent_count(), 1);
    }

    #[test]
    fn targets_are_cut_to_the_planned_ranges() {
        let target = |start, len| Target {
            range: BlockRange { start, len },
            compressed: false,
            pieces: 4,
        };
        let selection = Selection {
            targets: vec![target(0, 100), target(200, 100)],
            shared_bytes: 7,
            ..Selection::default()
        };
        // A job resumed at block 50.
        let cut = restrict(
            &selection,
            &[BlockRange {
                start: 50,
                len: 1000,
            }],
        );
        let ranges: Vec<(u64, u64)> = cut
            .targets
            .iter()
            .map(|t| (t.range.start, t.range.len))
            .collect();
        assert_eq!(ranges, [(50, 50), (200, 100)]);
        assert_eq!(cut.shared_bytes, 7);
        assert!(restrict(
            &selection,
            &[BlockRange {
                start: 120,
                len: 50
            }]
        )
        .targets
        .is_empty());
    }
}
