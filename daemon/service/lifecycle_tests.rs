//! Every path of `decide`, one test each, at a fixed time.

use super::*;
use crate::assess::Assessment;
use crate::outcome::Size;
use crate::sys;

const NOW: i64 = 1_000_000;
const QUIET: u64 = 120;

fn assessment(extents: u64) -> Assessment {
    Assessment {
        size_bytes: 64 << 20,
        extents,
        fiemap_entries: extents,
        physical_runs: extents,
        ideal_extents: 1,
        data_ranges: 1,
        blocks: 16_384,
        score: 90.0,
    }
}

fn fresh() -> Counters {
    Counters::default()
}

fn moved(outcome: Outcome) -> Decision {
    decide(Attempt::Outcome(outcome), fresh(), NOW, QUIET)
}

fn failed(reason: FailReason) -> Outcome {
    Outcome::Failed {
        reason,
        before: Some(assessment(40)),
        bytes_moved: 4096,
    }
}

fn skipped(reason: SkipReason) -> Outcome {
    Outcome::Skipped {
        reason,
        before: Some(assessment(40)),
    }
}

fn no_space() -> SkipReason {
    SkipReason::NotEnoughFreeSpace {
        need: Size(1 << 30),
        available: Size(1 << 20),
        reserve: Size(1 << 20),
    }
}

/// The retry's time and reason, and which counter it grows.
fn retried(decision: &Decision) -> (i64, &Wait, Counted) {
    match decision {
        Decision::Retry { at, wait } => (*at, wait, wait.counted()),
        other => panic!("expected a retry, got {other:?}"),
    }
}

fn finished_as(decision: &Decision) -> (&Ending, &Finished) {
    match decision {
        Decision::Finish { ending, history } => (ending, history),
        other => panic!("expected a finish, got {other:?}"),
    }
}

#[test]
fn a_defragmented_file_is_finished_with_what_the_move_measured() {
    let m = Moved {
        before: assessment(40),
        after: assessment(1),
        bytes_moved: 64 << 20,
        converted: false,
    };
    let decision = moved(Outcome::Defragmented(m));
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::Defragmented(m));
    assert_eq!(record.outcome, HistoryOutcome::Defragmented);
    assert_eq!(
        (record.reason_code.as_deref(), record.reason.as_deref()),
        (None, None)
    );
    assert_eq!(
        (record.extents_before, record.extents_after),
        (Some(40), Some(1))
    );
    assert_eq!(record.bytes_moved, 64 << 20);
}

#[test]
fn an_interrupted_job_comes_back_at_once_with_its_cursor_as_a_requeue() {
    let decision = moved(Outcome::Interrupted {
        before: assessment(40),
        next_block: 2048,
        bytes_moved: 8 << 20,
    });
    let (at, wait, counted) = retried(&decision);
    assert_eq!(at, NOW);
    assert_eq!(wait, &Wait::Interrupted { next_block: 2048 });
    assert_eq!(
        (wait.why().as_str(), counted),
        ("interrupted", Counted::Requeue)
    );
}

#[test]
fn a_busy_file_waits_30_s_as_a_requeue() {
    let decision = moved(failed(FailReason::Kernel(sys::Error::Busy.into())));
    let (at, wait, counted) = retried(&decision);
    assert_eq!(
        (at, wait, counted),
        (NOW + 30, &Wait::Busy, Counted::Requeue)
    );
    assert_eq!(wait.why(), "busy");
}

#[test]
fn filesystem_trouble_waits_30_s_as_a_requeue_and_never_gives_up() {
    for error in [sys::Error::Io, sys::Error::ReadOnly] {
        let tired = Counters {
            failures: 40,
            requeues: 40,
            space_waits: 40,
        };
        let decision = decide(
            Attempt::Outcome(failed(FailReason::Kernel(error.clone().into()))),
            tired,
            NOW,
            QUIET,
        );
        let (at, wait, counted) = retried(&decision);
        assert_eq!(at, NOW + FS_TROUBLE_RETRY_SECS);
        assert_eq!(wait, &Wait::FilesystemTrouble(error.to_string()));
        assert_eq!(
            (wait.why().as_str(), counted),
            ("filesystem trouble", Counted::Requeue)
        );
    }
}

#[test]
fn a_filesystem_remounted_read_only_is_waited_for() {
    let decision = moved(skipped(SkipReason::ReadOnly));
    let (at, wait, counted) = retried(&decision);
    assert_eq!(
        (at, wait, counted),
        (NOW + 30, &Wait::ReadOnly, Counted::Requeue)
    );
    assert_eq!(wait.why(), "read-only");
}

#[test]
fn short_of_space_waits_on_its_own_count_then_is_skipped() {
    let mut counters = Counters {
        failures: 4,
        requeues: 9,
        space_waits: 0,
    };
    for wait_no in 1..MAX_SPACE_WAITS {
        let decision = decide(Attempt::Outcome(skipped(no_space())), counters, NOW, QUIET);
        let (at, wait, counted) = retried(&decision);
        assert_eq!(at, NOW + SPACE_RETRY_SECS);
        assert_eq!(
            wait,
            &Wait::ShortOfSpace {
                reason: no_space().to_string(),
                wait: wait_no
            }
        );
        assert_eq!(
            (wait.why().as_str(), counted),
            ("short of free space", Counted::SpaceWait),
            "failures (4 of 5 here) are not used up"
        );
        counters.space_waits += 1;
    }
    let decision = decide(Attempt::Outcome(skipped(no_space())), counters, NOW, QUIET);
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::Skipped(no_space().to_string()));
    assert_eq!(record.outcome, HistoryOutcome::Skipped);
    assert_eq!(record.reason_code.as_deref(), Some("not_enough_free_space"));
    assert_eq!(
        (record.extents_before, record.extents_after),
        (Some(40), None)
    );
}

#[test]
fn out_of_space_mid_move_waits_then_fails_for_the_last_time() {
    let reason = FailReason::Kernel(sys::Error::NoSpace.into());
    let decision = moved(failed(reason.clone()));
    let (_, wait, counted) = retried(&decision);
    assert_eq!(counted, Counted::SpaceWait);
    assert_eq!(
        wait,
        &Wait::ShortOfSpace {
            reason: reason.to_string(),
            wait: 1
        }
    );
    let spent = Counters {
        space_waits: MAX_SPACE_WAITS - 1,
        ..fresh()
    };
    let decision = decide(Attempt::Outcome(failed(reason.clone())), spent, NOW, QUIET);
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::GaveUp(reason.to_string()));
    assert_eq!(record.outcome, HistoryOutcome::Failed);
    assert_eq!(record.reason_code.as_deref(), Some("kernel_error"));
    assert_eq!(
        (record.extents_before, record.bytes_moved),
        (Some(40), 4096)
    );
}

#[test]
fn a_recently_written_file_waits_out_its_quiet_period() {
    let decision = moved(skipped(SkipReason::RecentlyWritten { ago_secs: 20 }));
    let (at, wait, counted) = retried(&decision);
    assert_eq!(at, NOW + 100);
    assert_eq!(
        wait,
        &Wait::RecentlyWritten {
            ago_secs: 20,
            wait_secs: 100
        }
    );
    assert_eq!(
        (wait.why().as_str(), counted),
        ("recently written", Counted::Requeue)
    );
    // Quiet already (the clock moved): at least a second.
    let late = moved(skipped(SkipReason::RecentlyWritten { ago_secs: 500 }));
    assert_eq!(retried(&late).0, NOW + 1);
}

#[test]
fn a_vanished_or_replaced_file_is_dropped() {
    for reason in [SkipReason::Vanished, SkipReason::Replaced] {
        assert_eq!(
            moved(skipped(reason)),
            Decision::Drop {
                why: "the file was deleted or replaced since it was queued"
            }
        );
    }
}

#[test]
fn any_other_skip_is_finished_with_its_reason() {
    let reason = SkipReason::AlreadyContiguous {
        extents: 1,
        ideal: 1,
    };
    let decision = moved(skipped(reason.clone()));
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::Skipped(reason.to_string()));
    assert_eq!(record.outcome, HistoryOutcome::Skipped);
    assert_eq!(record.reason_code.as_deref(), Some("already_contiguous"));
    assert_eq!(record.reason, Some(reason.to_string()));
    assert_eq!(
        (record.extents_before, record.extents_after),
        (Some(40), None)
    );
    assert_eq!(record.bytes_moved, 0);
}

#[test]
fn a_writer_that_outpaced_the_move_is_recorded_at_once() {
    let reason = FailReason::WriterOutpaced {
        before: 40,
        after: 55,
        appended: Size(1 << 20),
    };
    let decision = moved(failed(reason.clone()));
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::WriterOutpaced(reason.to_string()));
    assert_eq!(record.outcome, HistoryOutcome::Failed);
    assert_eq!(record.reason_code.as_deref(), Some("writer_outpaced"));
    assert_eq!(
        (record.extents_before, record.extents_after),
        (Some(40), Some(55))
    );
    assert_eq!(record.bytes_moved, 4096);
}

#[test]
fn a_failure_retries_in_10_minutes_until_the_fifth_gives_up() {
    let reason = FailReason::ShortMove {
        at: 8,
        asked: 4,
        moved: 1,
    };
    let mut counters = Counters {
        requeues: 30,
        ..fresh()
    };
    for failure in 1..MAX_FAILURES {
        let decision = decide(
            Attempt::Outcome(failed(reason.clone())),
            counters,
            NOW,
            QUIET,
        );
        let (at, wait, counted) = retried(&decision);
        assert_eq!(at, NOW + RETRY_AFTER_SECS);
        assert_eq!(
            wait,
            &Wait::Failed {
                reason: reason.to_string(),
                failure
            }
        );
        assert_eq!(
            (wait.why(), counted),
            (reason.to_string(), Counted::Failure)
        );
        counters.failures += 1;
    }
    let decision = decide(
        Attempt::Outcome(failed(reason.clone())),
        counters,
        NOW,
        QUIET,
    );
    let (ending, record) = finished_as(&decision);
    assert_eq!(ending, &Ending::GaveUp(reason.to_string()));
    assert_eq!(record.reason_code.as_deref(), Some("short_move"));
}

#[test]
fn harmless_requeues_never_make_a_failure_final() {
    // The bug this module fixes: four harmless returns used to make the
    // first real failure the last.
    let many_requeues = Counters {
        requeues: 1_000,
        ..fresh()
    };
    let decision = decide(
        Attempt::Outcome(failed(FailReason::DonorMismatch("x".into()))),
        many_requeues,
        NOW,
        QUIET,
    );
    assert_eq!(retried(&decision).2, Counted::Failure);
}

#[test]
fn a_conversion_without_a_move_is_finished_as_skipped() {
    let decision = moved(Outcome::Converted {
        before: assessment(12),
        reason: "is already contiguous".into(),
    });
    let (ending, record) = finished_as(&decision);
    assert_eq!(
        ending,
        &Ending::ConvertedOnly("is already contiguous".into())
    );
    assert_eq!(record.outcome, HistoryOutcome::Skipped);
    assert_eq!(record.reason_code.as_deref(), Some("converted_only"));
    assert_eq!(
        record.reason.as_deref(),
        Some("converted to extents, but not defragmented: it is already contiguous")
    );
    assert_eq!(
        (record.extents_before, record.extents_after),
        (Some(12), None)
    );
}

#[test]
fn a_dry_run_comes_back_at_once() {
    let decision = moved(Outcome::WouldDefragment(assessment(40)));
    let (at, wait, counted) = retried(&decision);
    assert_eq!((at, wait, counted), (NOW, &Wait::DryRun, Counted::Requeue));
}

#[test]
fn before_the_move_a_lost_filesystem_or_file_drops_the_job() {
    assert_eq!(
        decide(Attempt::NotCovered, fresh(), NOW, QUIET),
        Decision::Drop {
            why: "its filesystem is no longer covered"
        }
    );
    assert_eq!(
        decide(Attempt::NotFound, fresh(), NOW, QUIET),
        Decision::Drop {
            why: "the file was deleted or renamed since it was queued"
        }
    );
}

#[test]
fn before_the_move_an_unmounted_filesystem_and_pressure_are_requeues() {
    let decision = decide(Attempt::NotMounted, fresh(), NOW, QUIET);
    let (at, wait, counted) = retried(&decision);
    assert_eq!(
        (at, wait, counted),
        (NOW + 600, &Wait::NotMounted, Counted::Requeue)
    );
    assert_eq!(wait.why(), "its filesystem is not mounted where it was");
    let decision = decide(Attempt::HeldByPressure, fresh(), NOW, QUIET);
    let (at, wait, counted) = retried(&decision);
    assert_eq!(
        (at, wait, counted),
        (NOW + 10, &Wait::Pressure, Counted::Requeue)
    );
    assert_eq!(wait.why(), "I/O pressure");
}

#[test]
fn an_unopenable_directory_counts_as_a_failure_but_is_retried_still() {
    let tired = Counters {
        failures: 9,
        ..fresh()
    };
    let decision = decide(
        Attempt::OpenFailed("permission denied".into()),
        tired,
        NOW,
        QUIET,
    );
    let (at, wait, counted) = retried(&decision);
    assert_eq!(at, NOW + RETRY_AFTER_SECS);
    assert_eq!(wait, &Wait::OpenFailed("permission denied".into()));
    assert_eq!(
        (wait.why().as_str(), counted),
        ("permission denied", Counted::Failure)
    );
}
