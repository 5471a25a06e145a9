//! What becomes of a job after one attempt at it: back to the queue until
//! when (and which of its counters grows), finished with what outcome, or
//! dropped. A pure function of the attempt, the job's counters and the
//! time; the worker carries the decision out (store, log, metrics) and
//! must not decide anything itself.
//!
//! Only real failures bring a job to be given up. A harmless return
//! (interrupted, paused, busy under a writer, recently written, I/O
//! pressure, the filesystem away for a while) counts as a requeue, and a
//! wait for free space counts on its own, so that neither uses up the
//! tries a failing job has.

use crate::outcome::{FailReason, KernelError, KernelErrorKind, Moved, Outcome, SkipReason};
use crate::store::{Counted, Finished, HistoryOutcome, Job};

/// How long a job waits after a failure before it is tried again.
pub const RETRY_AFTER_SECS: i64 = 600;
/// How long a job waits when I/O pressure holds moves back at its start.
pub const PRESSURE_RETRY_SECS: i64 = 10;
/// How long a job whose file was busy under a writer waits: it passes soon.
pub const BUSY_RETRY_SECS: i64 = 30;
/// How long a job waits after an I/O error or a read-only filesystem: most
/// often the filesystem was shut down or remounted, and the next attempt
/// finds it back (or finds it gone and drops the job).
pub const FS_TROUBLE_RETRY_SECS: i64 = 30;
/// How long a job waits when the filesystem is short of free space (another
/// writer filled it): space often comes back soon, a log rotated, a
/// temporary file deleted.
pub const SPACE_RETRY_SECS: i64 = 30;
/// Real failures before a job is given up.
pub const MAX_FAILURES: u32 = 5;
/// Attempts short of free space before a job is recorded as skipped (or
/// failed, when the kernel ran out mid-move); the next crawl finds the
/// file again.
pub const MAX_SPACE_WAITS: u32 = 5;

/// How one attempt at a job ended: before the move, when the worker could
/// not get to the file, or with the mover's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Its filesystem is no longer covered.
    NotCovered,
    /// Its filesystem is not mounted where it was.
    NotMounted,
    /// The file is no longer at its path.
    NotFound,
    /// The file's directory could not be opened, for this reason.
    OpenFailed(String),
    /// I/O pressure held moves back before the move began.
    HeldByPressure,
    /// The mover's outcome.
    Outcome(Outcome),
}

/// A job's counters, as the store keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub failures: u32,
    pub requeues: u32,
    pub space_waits: u32,
}

impl Counters {
    pub fn of(job: &Job) -> Self {
        Counters {
            failures: job.attempts,
            requeues: job.requeues,
            space_waits: job.space_waits,
        }
    }
}

/// What to do with a job after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Back to the queue, to be taken again no sooner than `at`.
    Retry { at: i64, wait: Wait },
    /// Done with: the history records it.
    Finish { ending: Ending, history: Finished },
    /// Removed without an outcome: the file or its filesystem went away.
    Drop { why: &'static str },
}

/// Why a job goes back to the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// Stopped between chunks (pause, shutdown, a window closing, the
    /// budget spent); the mover committed the file up to `next_block`.
    Interrupted {
        next_block: u64,
    },
    Busy,
    /// An I/O error or a read-only filesystem under the move.
    FilesystemTrouble(String),
    /// The filesystem was remounted read-only since the job was queued.
    ReadOnly,
    /// Written `ago_secs` ago: it waits out the rest of its quiet period.
    RecentlyWritten {
        ago_secs: u64,
        wait_secs: i64,
    },
    Pressure,
    NotMounted,
    /// Its directory could not be opened.
    OpenFailed(String),
    /// Short of free space: the `wait`-th time.
    ShortOfSpace {
        reason: String,
        wait: u32,
    },
    /// Failed: the `failure`-th time.
    Failed {
        reason: String,
        failure: u32,
    },
    DryRun,
}

impl Wait {
    /// What the store records as the job's last error.
    pub fn why(&self) -> String {
        match self {
            Wait::Interrupted { .. } => "interrupted".into(),
            Wait::Busy => "busy".into(),
            Wait::FilesystemTrouble(_) => "filesystem trouble".into(),
            Wait::ReadOnly => "read-only".into(),
            Wait::RecentlyWritten { .. } => "recently written".into(),
            Wait::Pressure => "I/O pressure".into(),
            Wait::NotMounted => "its filesystem is not mounted where it was".into(),
            Wait::OpenFailed(reason) | Wait::Failed { reason, .. } => reason.clone(),
            Wait::ShortOfSpace { .. } => "short of free space".into(),
            Wait::DryRun => "dry run".into(),
        }
    }

    /// Which counter the return adds to. An open that failed counts as a
    /// failure but never gives the job up on its own, as before counters
    /// were kept apart.
    pub fn counted(&self) -> Counted {
        match self {
            Wait::Failed { .. } | Wait::OpenFailed(_) => Counted::Failure,
            Wait::ShortOfSpace { .. } => Counted::SpaceWait,
            _ => Counted::Requeue,
        }
    }
}

/// How a finished job ended, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Defragmented(Moved),
    /// Left alone, for this reason.
    Skipped(String),
    /// A writer outpaced the move: recorded at once, not retried.
    WriterOutpaced(String),
    /// Failed for the last time.
    GaveUp(String),
    /// Converted to extents, then not defragmented, for this reason.
    ConvertedOnly(String),
}

/// What becomes of a job after `attempt`, given its `counters` (before
/// this attempt), the time `now` and the quiet period after a write.
pub fn decide(attempt: Attempt, counters: Counters, now: i64, quiet_secs: u64) -> Decision {
    let retry = |after_secs: i64, wait: Wait| Decision::Retry {
        at: now + after_secs,
        wait,
    };
    let outcome = match attempt {
        Attempt::NotCovered => {
            return Decision::Drop {
                why: "its filesystem is no longer covered",
            }
        }
        Attempt::NotMounted => return retry(RETRY_AFTER_SECS, Wait::NotMounted),
        Attempt::NotFound => {
            return Decision::Drop {
                why: "the file was deleted or renamed since it was queued",
            }
        }
        Attempt::OpenFailed(reason) => return retry(RETRY_AFTER_SECS, Wait::OpenFailed(reason)),
        // Held back before a donor is allocated, since allocating and
        // freeing one per attempt fragments the free space that the next
        // attempt needs.
        Attempt::HeldByPressure => return retry(PRESSURE_RETRY_SECS, Wait::Pressure),
        Attempt::Outcome(outcome) => outcome,
    };
    let space_left = counters.space_waits + 1 < MAX_SPACE_WAITS;
    match outcome {
        Outcome::Defragmented(moved) => Decision::Finish {
            history: finished(
                HistoryOutcome::Defragmented,
                None,
                (Some(moved.before.extents), Some(moved.after.extents)),
                moved.bytes_moved,
            ),
            ending: Ending::Defragmented(moved),
        },
        Outcome::Interrupted { next_block, .. } => retry(0, Wait::Interrupted { next_block }),
        Outcome::Failed {
            reason:
                FailReason::Kernel(KernelError {
                    kind: KernelErrorKind::Busy,
                    ..
                }),
            ..
        } => retry(BUSY_RETRY_SECS, Wait::Busy),
        Outcome::Failed {
            reason:
                FailReason::Kernel(
                    e @ KernelError {
                        kind: KernelErrorKind::Io | KernelErrorKind::ReadOnly,
                        ..
                    },
                ),
            ..
        } => retry(
            FS_TROUBLE_RETRY_SECS,
            Wait::FilesystemTrouble(e.to_string()),
        ),
        // Remounted read-only since the job was queued: most often for a
        // while (maintenance, an error the operator is looking at).
        Outcome::Skipped {
            reason: SkipReason::ReadOnly,
            ..
        } => retry(FS_TROUBLE_RETRY_SECS, Wait::ReadOnly),
        Outcome::Skipped {
            reason: reason @ SkipReason::NotEnoughFreeSpace { .. },
            ..
        } if space_left => short_of_space(now, &reason, counters),
        Outcome::Failed {
            reason:
                reason @ FailReason::Kernel(KernelError {
                    kind: KernelErrorKind::NoSpace,
                    ..
                }),
            ..
        } if space_left => short_of_space(now, &reason, counters),
        // Out of space for the last time while moving: given up, whatever
        // its failures (it failed for want of space, not by fault).
        Outcome::Failed {
            reason:
                reason @ FailReason::Kernel(KernelError {
                    kind: KernelErrorKind::NoSpace,
                    ..
                }),
            before,
            bytes_moved,
        } => give_up(reason, before.map(|b| b.extents), bytes_moved),
        Outcome::Skipped {
            reason: SkipReason::RecentlyWritten { ago_secs },
            ..
        } => {
            let wait_secs = i64::try_from(quiet_secs.saturating_sub(ago_secs))
                .unwrap_or(0)
                .max(1);
            retry(
                wait_secs,
                Wait::RecentlyWritten {
                    ago_secs,
                    wait_secs,
                },
            )
        }
        Outcome::Skipped {
            reason: SkipReason::Vanished | SkipReason::Replaced,
            ..
        } => Decision::Drop {
            why: "the file was deleted or replaced since it was queued",
        },
        Outcome::Skipped { reason, before } => Decision::Finish {
            history: finished(
                HistoryOutcome::Skipped,
                Some((reason.code(), reason.to_string())),
                (before.map(|b| b.extents), None),
                0,
            ),
            ending: Ending::Skipped(reason.to_string()),
        },
        // Recorded at once, with what the move did: trying again on a timer
        // while the writer appends would only move the file again for
        // nothing. The next write the service sees (or the next crawl)
        // queues it again, for after its quiet period.
        Outcome::Failed {
            reason: reason @ FailReason::WriterOutpaced { .. },
            before,
            bytes_moved,
        } => Decision::Finish {
            history: finished(
                HistoryOutcome::Failed,
                Some((reason.code(), reason.to_string())),
                (before.map(|b| b.extents), reason.extents_after()),
                bytes_moved,
            ),
            ending: Ending::WriterOutpaced(reason.to_string()),
        },
        Outcome::Failed {
            reason,
            before,
            bytes_moved,
        } => {
            let failure = counters.failures + 1;
            if failure >= MAX_FAILURES {
                give_up(reason, before.map(|b| b.extents), bytes_moved)
            } else {
                retry(
                    RETRY_AFTER_SECS,
                    Wait::Failed {
                        reason: reason.to_string(),
                        failure,
                    },
                )
            }
        }
        Outcome::Converted { reason, before } => {
            let why = format!("converted to extents, but not defragmented: it {reason}");
            Decision::Finish {
                history: finished(
                    HistoryOutcome::Skipped,
                    Some(("converted_only", why)),
                    (Some(before.extents), None),
                    0,
                ),
                ending: Ending::ConvertedOnly(reason),
            }
        }
        Outcome::WouldDefragment(_) => retry(0, Wait::DryRun),
    }
}

/// The filesystem is short of space now (another writer filled it): the
/// job waits for it to come back, a few times.
fn short_of_space(now: i64, reason: &dyn std::fmt::Display, counters: Counters) -> Decision {
    Decision::Retry {
        at: now + SPACE_RETRY_SECS,
        wait: Wait::ShortOfSpace {
            reason: reason.to_string(),
            wait: counters.space_waits + 1,
        },
    }
}

fn give_up(reason: FailReason, extents_before: Option<u64>, bytes_moved: u64) -> Decision {
    Decision::Finish {
        history: finished(
            HistoryOutcome::Failed,
            Some((reason.code(), reason.to_string())),
            (extents_before, reason.extents_after()),
            bytes_moved,
        ),
        ending: Ending::GaveUp(reason.to_string()),
    }
}

/// The history's record. `extents` are the file's extents at the start of
/// the attempt and at its end, as the move measured them (`None` where it
/// did not: the job's queued count stands in for the start).
fn finished(
    outcome: HistoryOutcome,
    reason: Option<(&str, String)>,
    extents: (Option<u64>, Option<u64>),
    bytes_moved: u64,
) -> Finished {
    let (reason_code, reason) = reason.map_or((None, None), |(code, text)| {
        (Some(code.to_owned()), Some(text))
    });
    Finished {
        outcome,
        reason_code,
        reason,
        extents_before: extents.0,
        extents_after: extents.1,
        bytes_moved,
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
