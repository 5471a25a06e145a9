//! One worker's turns, and the worker thread, over simulated files.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::outcome::{FailReason, Outcome, Size, SkipReason};
use crate::store::{HistoryOutcome, JobState, SettledWhy, Store};
use crate::sys;

use super::super::shared::Pause;
use super::super::worker::{self, Turn};
use super::sim::{Step, BLOCK};
use super::{Rig, CHUNK_BLOCKS, T0};

fn busy() -> Step {
    Step::End(Outcome::Failed {
        reason: FailReason::Kernel(sys::Error::Busy.into()),
        before: None,
        bytes_moved: 0,
    })
}

fn broken() -> Step {
    Step::End(Outcome::Failed {
        reason: FailReason::DonorMismatch("the donor's blocks moved".into()),
        before: None,
        bytes_moved: 0,
    })
}

fn recently_written() -> Step {
    Step::End(Outcome::Skipped {
        reason: SkipReason::RecentlyWritten { ago_secs: 10 },
        before: None,
    })
}

fn no_space() -> Step {
    Step::End(Outcome::Skipped {
        reason: SkipReason::NotEnoughFreeSpace {
            need: Size(1 << 30),
            available: Size(1 << 20),
            reserve: Size(0),
        },
        before: None,
    })
}

/// Waits up to `limit` for `done`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn a_job_moves_chunk_by_chunk_and_is_finished() {
    let rig = Rig::new();
    let id = rig.queue(1, 4 * CHUNK_BLOCKS, vec![]);
    assert_eq!(rig.turn(), Turn::Worked);

    let seen = rig.sim.seen();
    let firsts: Vec<u64> = seen.chunks.iter().map(|c| c.1).collect();
    assert_eq!(firsts, [0, 16, 32, 48]);
    assert_eq!(rig.job(id), None, "no longer queued");
    let entry = &rig.history()[0];
    assert_eq!(entry.outcome, HistoryOutcome::Defragmented);
    assert_eq!((entry.extents_before, entry.extents_after), (40, Some(1)));
    assert_eq!(entry.bytes_moved, 4 * CHUNK_BLOCKS * BLOCK);
    assert_eq!(rig.sim.file("data/file-1").map(|f| f.extents), Some(1));
    let settled = rig.shared.store().settled(&entry.file).unwrap();
    assert_eq!(settled.map(|s| s.why), Some(SettledWhy::Moved));
    assert_eq!(
        rig.turn(),
        Turn::Idle(Duration::from_secs(30)),
        "nothing left"
    );
}

#[test]
fn a_busy_job_comes_back_when_its_wait_is_over() {
    let rig = Rig::new();
    let id = rig.queue(1, CHUNK_BLOCKS, vec![busy()]);
    assert_eq!(rig.turn(), Turn::Worked);
    let job = rig.job(id).unwrap();
    assert_eq!((job.state, job.not_before), (JobState::Queued, T0 + 30));
    assert_eq!((job.attempts, job.requeues), (0, 1));
    assert_eq!(job.last_error.as_deref(), Some("busy"));

    rig.advance(29);
    assert_eq!(rig.turn(), Turn::Idle(Duration::from_secs(1)), "due in 1 s");
    rig.advance(1);
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Defragmented);
}

#[test]
fn a_failing_job_gives_up_at_its_fifth_failure_whatever_its_requeues() {
    let rig = Rig::new();
    let script = vec![
        busy(),
        broken(),
        recently_written(),
        busy(),
        broken(),
        busy(),
        broken(),
        recently_written(),
        broken(),
        busy(),
        broken(),
    ];
    let turns = script.len();
    let id = rig.queue(1, CHUNK_BLOCKS, script);
    for turn in 1..=turns {
        assert_eq!(rig.turn(), Turn::Worked, "turn {turn}");
        if let Some(job) = rig.job(id) {
            // Failures wait 10 minutes, the rest less.
            assert!(job.not_before <= rig.clock.now() + 600, "{job:?}");
            rig.clock.set(job.not_before);
        }
    }
    assert_eq!(rig.job(id), None);
    let history = rig.history();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, HistoryOutcome::Failed);
    assert_eq!(history[0].reason_code.as_deref(), Some("donor_mismatch"));
    assert_eq!(rig.sim.seen().starts.len(), turns, "not one attempt less");
}

#[test]
fn a_failure_waits_ten_minutes_and_counts_as_one() {
    let rig = Rig::new();
    let id = rig.queue(1, CHUNK_BLOCKS, vec![broken()]);
    assert_eq!(rig.turn(), Turn::Worked);
    let job = rig.job(id).unwrap();
    assert_eq!(
        (job.attempts, job.requeues, job.not_before),
        (1, 0, T0 + 600)
    );
    rig.advance(599);
    assert_eq!(rig.turn(), Turn::Idle(Duration::from_secs(1)));
    rig.advance(1);
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Defragmented);
}

#[test]
fn waits_for_space_do_not_use_up_a_failing_jobs_tries() {
    let rig = Rig::new();
    let mut script = vec![broken(); 4];
    script.extend(vec![no_space(); 4]);
    let id = rig.queue(1, CHUNK_BLOCKS, script);
    for _ in 0..8 {
        assert_eq!(rig.turn(), Turn::Worked);
        rig.clock.set(rig.job(id).unwrap().not_before);
    }
    let job = rig.job(id).unwrap();
    assert_eq!((job.attempts, job.space_waits), (4, 4));
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Defragmented);
}

#[test]
fn a_job_short_of_space_is_skipped_after_five_tries_30_s_apart() {
    let rig = Rig::new();
    let id = rig.queue(1, CHUNK_BLOCKS, vec![no_space(); 5]);
    for wait in 1..5 {
        assert_eq!(rig.turn(), Turn::Worked);
        let job = rig.job(id).unwrap();
        assert_eq!(
            (job.space_waits, job.not_before),
            (wait, rig.clock.now() + 30)
        );
        rig.advance(30);
    }
    assert_eq!(rig.turn(), Turn::Worked);
    let entry = &rig.history()[0];
    assert_eq!(entry.outcome, HistoryOutcome::Skipped);
    assert_eq!(entry.reason_code.as_deref(), Some("not_enough_free_space"));
}

#[test]
fn a_file_gone_from_its_path_drops_the_job() {
    let rig = Rig::new();
    let id = rig.queue(1, CHUNK_BLOCKS, vec![]);
    rig.sim.remove("data/file-1");
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.job(id), None);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Dropped);
    assert!(rig.sim.seen().starts.is_empty());
}

#[test]
fn a_file_replaced_at_its_path_drops_the_job() {
    let rig = Rig::new();
    let id = rig.queue(1, CHUNK_BLOCKS, vec![]);
    let mut other = rig.sim.file("data/file-1").unwrap();
    other.ino = 2;
    rig.sim.add("data/file-1", other);
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.job(id), None);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Dropped);
}

#[test]
fn a_move_that_fails_midway_is_retried_from_its_cursor() {
    let rig = Rig::new();
    let failing = Step::FailAfter {
        chunks: 2,
        reason: FailReason::ShortMove {
            at: 32,
            asked: 16,
            moved: 3,
        },
    };
    let id = rig.queue(1, 4 * CHUNK_BLOCKS, vec![failing]);
    assert_eq!(rig.turn(), Turn::Worked);
    let job = rig.job(id).unwrap();
    assert_eq!((job.next_block, job.attempts), (2 * CHUNK_BLOCKS, 1));
    rig.advance(600);
    assert_eq!(rig.turn(), Turn::Worked);
    let starts: Vec<u64> = rig.sim.seen().starts.iter().map(|s| s.1).collect();
    assert_eq!(starts, [0, 2 * CHUNK_BLOCKS]);
    assert_eq!(rig.history()[0].outcome, HistoryOutcome::Defragmented);
}

#[test]
fn a_pause_mid_move_stops_at_a_chunk_and_the_move_resumes_there() {
    let rig = Rig::new();
    let id = rig.queue(1, 4 * CHUNK_BLOCKS, vec![]);
    let shared = Arc::downgrade(&rig.shared);
    rig.sim.on_chunk(move |chunk| {
        if let (2, Some(shared)) = (chunk, shared.upgrade()) {
            shared.set_pause(Pause::Indefinitely);
        }
    });
    assert_eq!(rig.turn(), Turn::Worked);
    let job = rig.job(id).unwrap();
    assert_eq!(
        job.next_block,
        2 * CHUNK_BLOCKS,
        "the cursor of the last chunk"
    );
    assert_eq!((job.state, job.not_before), (JobState::Queued, T0));
    assert_eq!((job.attempts, job.requeues), (0, 1));

    assert_eq!(rig.turn(), Turn::Idle(Duration::from_secs(1)), "paused");
    rig.sim.on_chunk(|_| {});
    rig.shared.set_pause(Pause::Running);
    assert_eq!(rig.turn(), Turn::Worked);
    let seen = rig.sim.seen();
    assert_eq!(seen.starts.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 32]);
    let firsts: Vec<u64> = seen.chunks.iter().map(|c| c.1).collect();
    assert_eq!(firsts, [0, 16, 32, 48], "no chunk moved twice");
    let entry = &rig.history()[0];
    assert_eq!(entry.outcome, HistoryOutcome::Defragmented);
    assert_eq!(
        entry.bytes_moved,
        2 * CHUNK_BLOCKS * BLOCK,
        "the resumed half"
    );
}

#[test]
fn a_job_stopped_by_shutdown_resumes_from_its_cursor_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let rig = Rig::on(Store::open(dir.path()).unwrap());
        let id = rig.queue(1, 4 * CHUNK_BLOCKS, vec![]);
        let shared = Arc::downgrade(&rig.shared);
        rig.sim.on_chunk(move |chunk| {
            if let (3, Some(shared)) = (chunk, shared.upgrade()) {
                shared.begin_shutdown();
            }
        });
        assert_eq!(rig.turn(), Turn::Worked);
        assert_eq!(rig.job(id).unwrap().next_block, 3 * CHUNK_BLOCKS);
        id
    };
    // The service starts again on the same state directory.
    let store = Store::open(dir.path()).unwrap();
    store.requeue_interrupted().unwrap();
    let rig = Rig::on(store);
    rig.queue(1, 4 * CHUNK_BLOCKS, vec![]);
    assert_eq!(rig.turn(), Turn::Worked);
    assert_eq!(rig.sim.seen().starts, [("data/file-1".into(), 48)]);
    let entry = &rig.history()[0];
    assert_eq!(
        (entry.outcome, entry.bytes_moved),
        (HistoryOutcome::Defragmented, 16 * BLOCK)
    );
    assert_eq!(rig.job(id), None);
}

#[test]
fn a_paused_worker_holds_its_jobs_until_resumed() {
    let rig = Rig::new();
    rig.shared.set_pause(Pause::Indefinitely);
    let id = rig.queue(1, CHUNK_BLOCKS, vec![]);
    let worker = {
        let (shared, disk) = (Arc::clone(&rig.shared), rig.disk.clone());
        thread::spawn(move || worker::run(shared, disk))
    };
    thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.job(id).map(|j| j.state), Some(JobState::Queued));
    assert!(
        rig.sim.seen().starts.is_empty(),
        "nothing moved while paused"
    );

    rig.shared.set_pause(Pause::Running);
    assert!(
        eventually(Duration::from_secs(5), || !rig.history().is_empty()),
        "resumed, the job runs"
    );
    rig.shared.begin_shutdown();
    worker.join().unwrap();
}

#[test]
fn shutdown_ends_an_idle_worker_at_once() {
    let rig = Rig::new();
    let worker = {
        let (shared, disk) = (Arc::clone(&rig.shared), rig.disk.clone());
        thread::spawn(move || worker::run(shared, disk))
    };
    // Idle for 30 s with nothing queued.
    thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    rig.shared.begin_shutdown();
    worker.join().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn shutdown_ends_a_move_at_its_next_chunk_with_the_cursor_saved() {
    let rig = Rig::new();
    let id = rig.queue(1, 100_000 * CHUNK_BLOCKS, vec![]);
    let (moving, told) = mpsc::channel();
    rig.sim.on_chunk(move |chunk| {
        if chunk == 5 {
            let _ = moving.send(());
        }
        thread::sleep(Duration::from_millis(2));
    });
    let worker = {
        let (shared, disk) = (Arc::clone(&rig.shared), rig.disk.clone());
        thread::spawn(move || worker::run(shared, disk))
    };
    told.recv_timeout(Duration::from_secs(5))
        .expect("the move began");
    let asked = Instant::now();
    rig.shared.begin_shutdown();
    worker.join().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let job = rig.job(id).unwrap();
    assert_eq!(job.state, JobState::Queued, "given back, not left running");
    assert!(job.next_block >= 5 * CHUNK_BLOCKS, "{}", job.next_block);
    let moved = rig.sim.seen().chunks.last().map(|c| c.1 + c.2);
    assert_eq!(
        Some(job.next_block),
        moved,
        "the cursor is the last chunk's end"
    );
}
