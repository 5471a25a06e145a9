//! Considering one file found by the crawl or the watcher: measure it,
//! ask the policy, and queue it if it is worth a move.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;

use crate::ext4;
use crate::inspect::{inspect, Filesystems, Inspected, Refusal, Settle, Target};
use crate::mounts::Covered;
use crate::mover::refuse_unmovable;
use crate::outcome::SkipReason;
use crate::policy::{self, Decision, Heat, Thresholds};
use crate::store::{FileId, NewJob, Tally};

use super::shared::Shared;

/// What became of a considered file.
#[derive(Debug, Clone, PartialEq)]
pub enum Considered {
    Queued { priority: f64 },
    Left(String),
    Gone,
    Failed(String),
}

/// Opens `rel` (relative to the root of `fs`) safely, for the mover or
/// the inspector: its parent directory below the root, never through a
/// symlink or across a mount.
pub fn target_for(fs: &Covered, root: BorrowedFd<'_>, rel: &Path) -> Result<Target, ext4::Error> {
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = rel
        .file_name()
        .map(OsStr::to_os_string)
        .ok_or(ext4::Error::NotFound)?;
    let dir = ext4::open_dir_beneath(root, parent)?;
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
    let target = match target_for(fs, root, rel) {
        Ok(target) => target,
        Err(ext4::Error::NotFound) => return (Considered::Gone, None),
        Err(e) => return (Considered::Failed(e.to_string()), None),
    };
    let mut filesystems = Filesystems::seeded(fs.dev, fs.info.clone());
    let inspected = match inspect(&target, &mut filesystems, Settle::AsIs) {
        Ok(inspected) => inspected,
        Err(Refusal::Skip(reason)) => return (Considered::Left(reason.to_string()), None),
        Err(Refusal::Fail(reason)) => return (Considered::Failed(reason.to_string()), None),
    };
    let measured = Some(Tally::of_file(
        inspected.assessment.extents,
        inspected.assessment.ideal_extents,
    ));
    (
        decide_and_queue(shared, fs, rel, urgency, now, &inspected, &target),
        measured,
    )
}

/// The policy's verdict on a measured file, carried out.
fn decide_and_queue(
    shared: &Shared,
    fs: &Covered,
    rel: &Path,
    urgency: Urgency,
    now: i64,
    inspected: &Inspected,
    target: &Target,
) -> Considered {
    let settings = shared.settings();
    match refuse_unmovable(inspected) {
        // Block-mapped files are converted first where the operator allows it.
        Err(SkipReason::BlockMapped) if settings.policy.convert_block_mapped => {}
        Err(reason) => return Considered::Left(reason.to_string()),
        Ok(()) => {}
    }
    let p = &settings.policy;
    let thresholds = Thresholds {
        min_size_bytes: p.min_size_bytes,
        min_excess_extents: p.min_excess_extents,
        min_score: p.min_score,
        quiet_period: p.quiet_period,
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
        Decision::Leave(reason) => Considered::Left(reason.to_string()),
        Decision::Queue { priority } => {
            let job = NewJob {
                file: FileId {
                    fs_uuid: fs.uuid.clone(),
                    ino: inspected.ino,
                    generation: inspected.generation,
                },
                path_hint: rel.to_path_buf(),
                size_bytes: a.size_bytes,
                extents_before: a.extents,
                ideal_extents: a.ideal_extents,
                score: a.score,
                priority,
                not_before: now,
            };
            match shared.store().enqueue(&job) {
                Ok(_) => {
                    shared.wake_all();
                    Considered::Queued { priority }
                }
                Err(e) => Considered::Failed(format!("cannot queue it: {e}")),
            }
        }
    }
}
