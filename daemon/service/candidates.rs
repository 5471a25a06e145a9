//! Considering one file found by the crawl, the write tracker or the
//! operator: measure it, ask the policy, and queue it if it is worth a
//! move. A file the service is done with (moved, or judged not worth it)
//! and unchanged since is not considered again on a write event: the
//! service's own opens raise such events.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use crate::backend::Inspected;
use crate::eligibility::refuse_unmovable;
use crate::inspect::{inspect, Filesystems, Settle};
use crate::mounts::Covered;
use crate::outcome::{Refusal, SkipReason};
use crate::policy::{self, Decision, Heat, Thresholds};
use crate::store::{Enqueued, FileId, Finished, HistoryOutcome, NewJob, SettledWhy, Tally};
use crate::sys::{self, open_by_handle, FileHandle, HandleError};
use crate::target::Target;

use super::shared::Shared;

/// What became of a considered file.
#[derive(Debug, Clone, PartialEq)]
pub enum Considered {
    Queued {
        priority: f64,
    },
    /// Its job is running: what was written now is looked at after it.
    Running,
    Left(Left),
    Gone,
    Failed(String),
}

/// Why a considered file was left as it is: kept typed, with its stable
/// code, until it is logged or told to the operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Left {
    /// A precondition refused it.
    #[error("{0}")]
    Skipped(SkipReason),
    /// The policy judged it not worth a move, or it is excluded.
    #[error("{0}")]
    Policy(policy::LeaveReason),
    /// The service moved it, and nobody wrote it since.
    #[error("unchanged since the service moved it")]
    UnchangedSinceMoved,
    /// The policy judged it not worth a move, and nobody wrote it since.
    #[error("unchanged since it was judged not worth a move")]
    UnchangedSinceNoGain,
    /// Named by a write event, it is not a regular file of the filesystem.
    #[error("not a regular file of this filesystem")]
    NotAFileHere,
    /// Named by a write event, its only name is outside the mount point.
    #[error("reachable only outside its mount point")]
    OutsideMountPoint,
}

impl Left {
    /// A stable code for logs and scripts: the skip or policy reason's own
    /// code where there is one.
    pub fn code(&self) -> &'static str {
        match self {
            Left::Skipped(reason) => reason.code(),
            Left::Policy(reason) => reason.code(),
            Left::UnchangedSinceMoved => "unchanged_since_moved",
            Left::UnchangedSinceNoGain => "unchanged_since_no_gain",
            Left::NotAFileHere => "not_a_file_here",
            Left::OutsideMountPoint => "outside_mount_point",
        }
    }
}

/// Opens `rel` (relative to the root of `fs`) safely, for the mover or
/// the inspector: its parent directory below the root, never through a
/// symlink or across a mount.
pub fn target_for(fs: &Covered, root: BorrowedFd<'_>, rel: &Path) -> Result<Target, sys::Error> {
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = rel
        .file_name()
        .map(OsStr::to_os_string)
        .ok_or(sys::Error::NotFound)?;
    let dir = sys::open_dir_beneath(root, parent)?;
    Ok(Target {
        dir: Arc::new(dir),
        name,
        path: fs.mount_point.join(rel),
        expected_dev: Some(fs.dev),
        expected_identity: None,
    })
}

/// Who asks for a file to be considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// The crawl found it.
    Crawl,
    /// The watcher saw it written.
    Written,
    /// The operator asked (`defragctl defrag`): the policy's thresholds do
    /// not apply (its preconditions do) and it goes first.
    Operator,
}

/// Above any priority the policy computes.
const OPERATOR_PRIORITY: f64 = 1e12;

/// Measures `rel` and queues it if the policy says it is worth it.
pub fn consider_file(
    shared: &Shared,
    fs: &Covered,
    root: BorrowedFd<'_>,
    rel: &Path,
    urgency: Urgency,
    now: i64,
) -> Considered {
    consider_and_measure(shared, fs, root, rel, urgency, now).0
}

/// `consider_file`, and what was measured of the file (None when it could
/// not be mapped): the crawl adds it up into the filesystem's tally.
pub fn consider_and_measure(
    shared: &Shared,
    fs: &Covered,
    root: BorrowedFd<'_>,
    rel: &Path,
    urgency: Urgency,
    now: i64,
) -> (Considered, Option<Tally>) {
    match target_for(fs, root, rel) {
        Ok(target) => consider_target(shared, fs, &target, rel, urgency, now),
        Err(sys::Error::NotFound) => (Considered::Gone, None),
        Err(e) => (Considered::Failed(e.to_string()), None),
    }
}

/// Considers the file that fanotify named by `handle`: reached by its
/// handle, so no rename or symlink can redirect it; its current name is
/// only used to reach it again safely, checked to be the same inode.
pub fn consider_handle(
    shared: &Shared,
    fs: &Covered,
    root: BorrowedFd<'_>,
    handle: &FileHandle,
    now: i64,
) -> Considered {
    let pinned = match open_by_handle(root, handle, nix::libc::O_PATH) {
        Ok(fd) => fd,
        Err(HandleError::Gone) => return Considered::Gone,
        Err(e) => return Considered::Failed(e.to_string()),
    };
    let Ok(stat) = sys::stat(pinned.as_fd()) else {
        return Considered::Gone;
    };
    let regular = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG;
    if !regular {
        return Considered::Left(Left::NotAFileHere);
    }
    if stat.st_dev != fs.dev {
        // A btrfs top level's mark sees every subvolume's writes: a file
        // in another subvolume is that subvolume's, where it is covered
        // (its own mount cannot be marked), reached through its mount.
        drop(pinned);
        return match subvolume_unit(shared, fs, stat.st_dev) {
            Some((other, other_root)) => {
                consider_handle(shared, &other, other_root.as_fd(), handle, now)
            }
            None => Considered::Left(Left::NotAFileHere),
        };
    }
    let generation = match sys::reopen(pinned.as_fd(), sys::Access::ReadOnly)
        .and_then(|file| sys::generation(file.as_fd()))
    {
        Ok(generation) => generation,
        Err(sys::Error::NotFound) => return Considered::Gone,
        Err(e) => return Considered::Failed(e.to_string()),
    };
    // The pin keeps the inode alive, so the name read here is its own (a
    // deleted file has none left).
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned));
    let Ok(path) = std::fs::read_link(link) else {
        return Considered::Gone;
    };
    if stat.st_nlink == 0 || path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
        return Considered::Gone;
    }
    let Ok(rel) = path.strip_prefix(&fs.mount_point) else {
        return Considered::Left(Left::OutsideMountPoint);
    };
    let mut target = match target_for(fs, root, rel) {
        Ok(target) => target,
        Err(sys::Error::NotFound) => return Considered::Gone,
        Err(e) => return Considered::Failed(e.to_string()),
    };
    // Same st_dev as the covered mount: on btrfs, its subvolume.
    target.expected_identity = Some(crate::target::FileKey {
        subvolume: fs.subvolume,
        ino: stat.st_ino,
        generation,
    });
    consider_target(shared, fs, &target, rel, Urgency::Written, now).0
}

/// The covered unit of the filesystem `fs` is on whose files have st_dev
/// `dev` (another btrfs subvolume of it), and its root, where it is
/// covered and still mounted.
fn subvolume_unit(
    shared: &Shared,
    fs: &Covered,
    dev: u64,
) -> Option<(Covered, std::os::fd::OwnedFd)> {
    let other = shared
        .covered()
        .into_values()
        .find(|c| c.dev == dev && c.info.uuid == fs.info.uuid && c.uuid != fs.uuid)?;
    let root = crate::mounts::reopen_root(&other)?;
    Some((other, root))
}

fn consider_target(
    shared: &Shared,
    fs: &Covered,
    target: &Target,
    rel: &Path,
    urgency: Urgency,
    now: i64,
) -> (Considered, Option<Tally>) {
    let mut filesystems = Filesystems::seeded(fs.dev, fs.backend, fs.info.clone());
    filesystems.set_btrfs_policy(shared.settings().policy.btrfs);
    let inspected = match inspect(target, &mut filesystems, Settle::AsIs) {
        Ok(inspected) => inspected,
        Err(Refusal::Skip(SkipReason::Vanished | SkipReason::Replaced)) => {
            return (Considered::Gone, None)
        }
        Err(Refusal::Skip(reason)) => return (Considered::Left(Left::Skipped(reason)), None),
        Err(Refusal::Fail(reason)) => return (Considered::Failed(reason.to_string()), None),
    };
    let measured = Some(Tally::of_file(
        inspected.assessment.extents,
        inspected.assessment.ideal_extents,
    ));
    let file = FileId {
        fs_uuid: fs.uuid,
        subvolume: inspected.subvolume,
        ino: inspected.ino,
        generation: inspected.generation,
    };
    if let Some(why) = settled_since(shared, &file, &inspected, urgency) {
        return (Considered::Left(why), measured);
    }
    let candidate = Candidate {
        file,
        rel,
        target,
        inspected: &inspected,
    };
    (
        decide_and_queue(shared, fs, candidate, urgency, now),
        measured,
    )
}

/// A file inspected and identified, waiting for the policy's verdict.
struct Candidate<'a> {
    file: FileId,
    /// Its path below the covered mount, for the job and the logs.
    rel: &'a Path,
    target: &'a Target,
    inspected: &'a Inspected,
}

/// The policy's verdict on a measured file, carried out.
fn decide_and_queue(
    shared: &Shared,
    fs: &Covered,
    candidate: Candidate<'_>,
    urgency: Urgency,
    now: i64,
) -> Considered {
    let Candidate {
        file,
        rel,
        target,
        inspected,
    } = candidate;
    let settings = shared.settings();
    match refuse_unmovable(inspected) {
        // Block-mapped files are converted first where the operator allows it.
        Err(SkipReason::BlockMapped) if settings.policy.convert_block_mapped => {}
        Err(reason) => return Considered::Left(Left::Skipped(reason)),
        Ok(()) => {}
    }
    // Not queued where the move is refused for its crash risk: the crawl
    // would queue and skip every fragmented file there each pass.
    let allow_swapext = settings.policy.xfs_swapext_without_rmapbt;
    if let Err(reason) = inspected.backend.refuse_risky(&inspected.fs, allow_swapext) {
        return Considered::Left(Left::Skipped(reason));
    }
    let p = &settings.policy;
    // The first fragmented file of a filesystem whose medium is still to
    // be measured serves to measure it, before it is judged by it.
    shared.measure_medium(
        fs,
        inspected.file.as_fd(),
        &inspected.map,
        inspected.fs.block_size,
    );
    let thresholds = Thresholds {
        min_size_bytes: p.min_size_bytes,
        min_excess_extents: p.min_excess_extents,
        min_score: p.min_score,
        quiet_period: p.quiet_period,
        benefit: p.benefit(shared.medium(fs).medium),
    };
    let a = inspected.assessment;
    let decision = match urgency {
        Urgency::Operator if a.is_contiguous() => {
            Decision::Leave(policy::LeaveReason::FewExcessExtents {
                excess: a.excess_extents(),
                min: 1,
            })
        }
        Urgency::Operator => Decision::Queue {
            priority: OPERATOR_PRIORITY,
        },
        Urgency::Crawl => policy::decide(&target.path, &a, &thresholds, |path| p.is_excluded(path)),
        Urgency::Written => {
            match policy::decide(&target.path, &a, &thresholds, |path| p.is_excluded(path)) {
                Decision::Queue { .. } => Decision::Queue {
                    priority: policy::priority(&a, Heat::Hot),
                },
                leave => leave,
            }
        }
    };
    match decision {
        Decision::Leave(reason @ policy::LeaveReason::NoBenefit { .. }) => {
            record_no_benefit(shared, &file, inspected, rel, &reason);
            Considered::Left(Left::Policy(reason))
        }
        Decision::Leave(reason) => Considered::Left(Left::Policy(reason)),
        Decision::Queue { priority } => {
            let job = NewJob {
                file,
                path_hint: rel.to_path_buf(),
                size_bytes: a.size_bytes,
                extents_before: a.extents,
                ideal_extents: a.ideal_extents,
                score: a.score,
                priority,
                not_before: now,
            };
            let enqueued = shared.store().enqueue_unless_running(&job);
            match enqueued {
                Ok(Enqueued::Running(_)) => Considered::Running,
                Ok(Enqueued::Queued(_)) => {
                    shared.wake_all();
                    Considered::Queued { priority }
                }
                Err(e) => Considered::Failed(format!("cannot queue it: {e}")),
            }
        }
    }
}

/// Records in the history, once per version of the file, that the policy
/// left it because moving it would not pay on its medium, and settles it
/// so that its own write events do not bring it back.
fn record_no_benefit(
    shared: &Shared,
    file: &FileId,
    inspected: &Inspected,
    rel: &Path,
    reason: &policy::LeaveReason,
) {
    let store = shared.store();
    let known = store.settled(file).ok().flatten().is_some_and(|s| {
        s.why == SettledWhy::NoGain && s.unchanged(inspected.mtime, inspected.size)
    });
    if known {
        return;
    }
    let finished = Finished {
        outcome: HistoryOutcome::Skipped,
        reason_code: Some(reason.code().to_string()),
        reason: Some(reason.to_string()),
        extents_before: Some(inspected.assessment.extents),
        extents_after: None,
        bytes_moved: 0,
    };
    let recorded = store
        .record_left(file, rel, inspected.assessment.extents, &finished)
        .and_then(|()| store.settle(file, inspected.mtime, inspected.size, SettledWhy::NoGain));
    if let Err(e) = recorded {
        tracing::warn!(
            "cannot record that {} was left: {e}",
            crate::escape::escaped(rel)
        );
    }
}

/// Why `file` needs no look now, if the service is done with it and
/// nobody wrote it since. The operator's word always gets a look; a crawl
/// pass looks again at files judged not worth a move, since the free space
/// they lacked may be there now.
fn settled_since(
    shared: &Shared,
    file: &FileId,
    inspected: &Inspected,
    urgency: Urgency,
) -> Option<Left> {
    if urgency == Urgency::Operator {
        return None;
    }
    let settled = shared.store().settled(file).ok().flatten()?;
    if !settled.unchanged(inspected.mtime, inspected.size) {
        return None;
    }
    match (settled.why, urgency) {
        (SettledWhy::Moved, _) => Some(Left::UnchangedSinceMoved),
        (SettledWhy::NoGain, Urgency::Written) => Some(Left::UnchangedSinceNoGain),
        (SettledWhy::NoGain, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_file_keeps_its_reasons_code_and_words() {
        let skipped = Left::Skipped(SkipReason::Immutable);
        assert_eq!(skipped.code(), "immutable");
        assert_eq!(skipped.to_string(), SkipReason::Immutable.to_string());
        let policy = Left::Policy(policy::LeaveReason::Excluded);
        assert_eq!(policy.code(), "excluded");
        assert_eq!(
            Left::UnchangedSinceMoved.to_string(),
            "unchanged since the service moved it"
        );
    }
}
