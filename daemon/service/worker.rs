//! One worker thread per disk: takes the most urgent job on that disk's
//! filesystems, checks it is still the same file, moves it chunk by chunk
//! under the throttle (its thread in the idle I/O class), and records the
//! chunk cursor after every chunk so a crash redoes at most one chunk.
//! Between jobs it holds no file descriptor, so `umount` works. What
//! becomes of a job after an attempt is `lifecycle`'s to decide; the
//! worker carries it out. The move itself runs through `Shared::engine`.

use std::sync::Arc;
use std::time::Duration;

use crate::convert::Converting;
use crate::escape::{escaped, escaped_display};
use crate::filesystem::FsUuid;
use crate::mounts::{Covered, DiskId};
use crate::mover::{Control, MoveOptions, Progress, Supervisor};
use crate::outcome::{FailReason, Outcome, SkipReason};
use crate::ramp;
use crate::store::{Activity, FileId, Finished, HistoryOutcome, Job, SettledWhy};

use super::engine::FileStamp;
use super::hold::HoldClock;
use super::lifecycle::{
    self, Attempt, Counters, Decision, Ending, Wait, BUSY_RETRY_SECS, FS_TROUBLE_RETRY_SECS,
    MAX_SPACE_WAITS, SPACE_RETRY_SECS,
};
use super::shared::{local_midnight, MovingNow, Shared};
use super::status::human_duration;

/// How long an idle worker sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_secs(30);
/// A held move looks again this often.
const HOLD_STEP: Duration = Duration::from_millis(500);

/// Runs the worker of `disk` until shutdown.
pub fn run(shared: Arc<Shared>, disk: DiskId) {
    if let Err(e) = shared.engine().lower_io_priority() {
        tracing::warn!(
            "worker {}: cannot set the idle I/O class ({e}); moves run at normal I/O priority",
            disk.0
        );
    }
    while !shared.shutting_down() {
        let ticket = shared.wake_ticket();
        match turn(&shared, &disk) {
            Turn::Worked => {}
            Turn::Idle(timeout) => shared.idle_since(ticket, timeout),
            Turn::Retire => return,
        }
    }
}

/// What one look at the queue came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// A job was taken and attempted.
    Worked,
    /// Nothing to do for at most this long (or until woken).
    Idle(Duration),
    /// This disk's filesystems went away: the service retires the worker.
    Retire,
}

/// Looks at `disk`'s queue once, and attempts the job due if moving is
/// allowed now.
pub(super) fn turn(shared: &Shared, disk: &DiskId) -> Turn {
    if shared.paused() {
        return Turn::Idle(Duration::from_secs(1));
    }
    // Outside the maintenance windows the service only watches and queues.
    let closed_for = shared.until_window();
    if !closed_for.is_zero() {
        return Turn::Idle(closed_for.min(Duration::from_secs(60)));
    }
    // With the device's write budget spent, moves wait for the next day.
    if let Some(until) = shared.budget_spent_until(disk) {
        let left = u64::try_from(until - shared.now()).unwrap_or(0).max(1);
        return Turn::Idle(Duration::from_secs(left).min(Duration::from_secs(60)));
    }
    let uuids: Vec<FsUuid> = shared
        .covered()
        .into_values()
        .filter(|fs| &fs.disk == disk)
        .map(|fs| fs.uuid)
        .collect();
    if uuids.is_empty() {
        return Turn::Retire;
    }
    let job = match shared.store().next_job(&uuids, shared.now()) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!("worker {}: cannot read the queue: {e}", disk.0);
            return Turn::Idle(IDLE);
        }
    };
    match job {
        Some(job) => {
            run_job(shared, disk, job);
            Turn::Worked
        }
        None => Turn::Idle(until_next_due(shared, &uuids)),
    }
}

/// How long to sleep when nothing is due: until the earliest queued job
/// is (a file put back for its quiet period), at most IDLE.
fn until_next_due(shared: &Shared, uuids: &[FsUuid]) -> Duration {
    match shared.store().next_due(uuids) {
        Ok(Some(due)) => {
            Duration::from_secs(u64::try_from(due - shared.now()).unwrap_or(0).max(1)).min(IDLE)
        }
        _ => IDLE,
    }
}

fn run_job(shared: &Shared, disk: &DiskId, job: Job) {
    let settings = shared.settings();
    let (path, attempt) = match shared.covered_fs(job.file.fs_uuid) {
        None => (job.path_hint.clone(), Attempt::NotCovered),
        Some(fs) => {
            let path = fs.mount_point.join(&job.path_hint);
            let options = MoveOptions {
                chunk_bytes: settings.throttle.chunk_bytes.get(),
                reserve_percent: settings.policy.reserve_percent,
                dry_run: false,
                quiet_period: Some(settings.policy.quiet_period),
                convert_block_mapped: settings.policy.convert_block_mapped,
                xfs_swapext_without_rmapbt: settings.policy.xfs_swapext_without_rmapbt,
                btrfs: settings.policy.btrfs,
            };
            let attempt = attempt(shared, disk, &fs, &job, &path, &options);
            (path, attempt)
        }
    };
    record(
        shared,
        &job,
        &path,
        attempt,
        settings.policy.quiet_period.as_secs(),
    );
}

/// Finds the job's file and moves it, unless I/O pressure holds moves back.
fn attempt(
    shared: &Shared,
    disk: &DiskId,
    fs: &Covered,
    job: &Job,
    path: &std::path::Path,
    options: &MoveOptions,
) -> Attempt {
    let mut file = match shared.engine().open(fs, job) {
        Ok(file) => file,
        Err(unopened) => return unopened.into(),
    };
    // Held back by I/O pressure: give the job back before a donor is
    // allocated (see `lifecycle`).
    if shared.pace() == 0 {
        shared.clear_slowed();
        return Attempt::HeldByPressure;
    }
    let mut supervisor = JobSupervisor {
        shared,
        conversion: None,
        announced: false,
        job,
        disk,
        path,
    };
    // The file as it was before the service opened it: if nobody writes it
    // after the move, it is not considered again (see `settle`).
    let before_open = file.before_open();
    let total_bytes = job.size_bytes;
    // A resumed move goes on from its cursor: the status shows that much
    // as done once it is under way, not 0%.
    let resumed_bytes = job
        .next_block
        .saturating_mul(fs.info.block_size)
        .min(total_bytes);
    shared.set_moving(
        disk,
        Some(MovingNow::checking(
            path.to_path_buf(),
            resumed_bytes,
            total_bytes,
        )),
    );
    shared.start_ramp(disk);
    let outcome = file.defragment(options, job.next_block, &mut supervisor);
    shared.end_ramp(disk);
    shared.set_moving(disk, None);
    shared.clear_slowed();
    if let Some(stamp) = before_open {
        settle(shared, job, &stamp, &outcome);
    }
    Attempt::Outcome(outcome)
}

/// Records that the service is done with the file after `outcome`, as it
/// was (`stamp`) before the service opened it: its own open for writing and
/// its move raise write events, and a file unchanged since is not looked
/// at again until someone writes it (or, for a file not worth a move, the
/// next crawl pass).
fn settle(shared: &Shared, job: &Job, stamp: &FileStamp, outcome: &Outcome) {
    let why = match outcome {
        Outcome::Defragmented(_) => SettledWhy::Moved,
        Outcome::Skipped {
            reason: SkipReason::AlreadyContiguous { .. } | SkipReason::NoContiguousFreeSpace { .. },
            ..
        }
        | Outcome::Failed {
            reason: FailReason::NoImprovement { .. },
            ..
        } => SettledWhy::NoGain,
        _ => return,
    };
    if let Err(e) = shared
        .store()
        .settle(&job.file, stamp.mtime, stamp.size, why)
    {
        tracing::warn!("job {}: cannot record that it is settled: {e}", job.id);
    }
}

/// Paces one job's chunks and saves its cursor after each.
struct JobSupervisor<'a> {
    shared: &'a Shared,
    /// The store's record of a conversion under way.
    conversion: Option<i64>,
    /// Whether the start was logged (at the first chunk: only once every
    /// check passed is a move really under way).
    announced: bool,
    job: &'a Job,
    disk: &'a DiskId,
    path: &'a std::path::Path,
}

impl JobSupervisor<'_> {
    /// The kernel let go of the move (a chunk, a commit, the donor's
    /// allocation); says so when its wait was reported as a stall.
    fn back_from_kernel(&self) {
        if let Some(held) = self.shared.back_from_kernel(self.disk) {
            tracing::info!(
                "{}: moving again; the kernel held it for {}",
                escaped(&self.path),
                human_duration(held)
            );
        }
    }
}

impl JobSupervisor<'_> {
    /// Whether moving may go on now: not stopping, paused, outside the
    /// windows or out of budget, and the disk's ramp and I/O pressure
    /// allow some rate. Slowed by I/O pressure through the shared rate,
    /// and by the disk's ramp, which listens to the disk now and then (the
    /// mover has let its own write-back land first: `wants_quiet_disk`).
    /// Held back entirely where the floor is 0 and pressure is full or
    /// others use the disk; a hold listens all along, since the move
    /// issues nothing meanwhile.
    fn wait_for_the_disk(&mut self) -> Control {
        if self.shared.shutting_down()
            || self.shared.paused()
            || !self.shared.until_window().is_zero()
            || self.shared.budget_spent_until(self.disk).is_some()
        {
            return Control::Stop;
        }
        if self.shared.listen_due(self.disk) {
            self.shared.listen(self.disk, Duration::ZERO);
        }
        let mut clock = HoldClock::default();
        while self.shared.pace_on(self.disk) == 0 {
            let for_others = self
                .shared
                .yielding(self.disk)
                .is_some_and(|y| y.others_use_the_disk());
            if !clock.wait_more(for_others, HOLD_STEP)
                || self.shared.shutting_down()
                || self.shared.paused()
            {
                return Control::Stop;
            }
            self.shared.listen(self.disk, HOLD_STEP);
        }
        Control::Continue
    }
}

impl Supervisor for JobSupervisor<'_> {
    fn before_chunk(&mut self, bytes: u64) -> Control {
        // What follows (the throttle, a pressure hold) is the worker's own
        // wait, not the kernel's.
        self.back_from_kernel();
        if !self.announced {
            self.announced = true;
            self.shared.move_under_way(self.disk);
            let job = self.job;
            if job.next_block > 0 {
                tracing::info!(
                    "resuming job {} {} at block {}",
                    job.id,
                    escaped(&self.path),
                    job.next_block
                );
            } else {
                tracing::info!(
                    "defragmenting {} (job {}, {} extents)",
                    escaped(&self.path),
                    job.id,
                    job.extents_before
                );
            }
        }
        if self.wait_for_the_disk() == Control::Stop {
            return Control::Stop;
        }
        let wait = self.shared.throttle(bytes);
        if self.shared.listens_through(self.disk, wait) {
            // The listen ends the wait, right before the chunk: heard busy,
            // the chunk waits here rather than going out beside a
            // foreground that started while the move slept.
            self.shared
                .sleep(wait.saturating_sub(ramp::SETTLE + ramp::WINDOW));
            self.shared.listen(self.disk, Duration::ZERO);
            if self.wait_for_the_disk() == Control::Stop {
                return Control::Stop;
            }
        } else if !wait.is_zero() {
            self.shared.sleep(wait);
        }
        if self.shared.shutting_down() {
            Control::Stop
        } else {
            self.shared.kernel_has_it(self.disk);
            Control::Continue
        }
    }

    fn before_start(&mut self) -> Control {
        // The wait for the disk is the worker's own: held there for as long
        // as others use the disk, the move is not stalled in the kernel
        // (which the status and the log would say after 10 s).
        self.back_from_kernel();
        let control = self.wait_for_the_disk();
        if control == Control::Continue {
            // The donor's allocation is the kernel's again.
            self.shared.kernel_has_it(self.disk);
        }
        control
    }

    fn wants_quiet_disk(&mut self, bytes: u64) -> bool {
        self.shared.listen_due(self.disk)
            || self
                .shared
                .listens_through(self.disk, self.shared.throttle_wait(bytes))
    }

    fn committed(&mut self, took: Duration) {
        self.shared.committed(self.disk, took);
    }

    fn converting(&mut self, file: &Converting<'_>) {
        tracing::warn!(
            "converting {} to extents (EXT4_IOC_MIGRATE is not crash-safe; the conversion is recorded)",
            escaped(&file.path)
        );
        let id = FileId {
            fs_uuid: self.job.file.fs_uuid,
            subvolume: self.job.file.subvolume,
            ino: file.ino,
            generation: file.generation,
        };
        match self
            .shared
            .store()
            .begin_conversion(&id, file.path, file.device)
        {
            Ok(record) => self.conversion = Some(record),
            Err(e) => tracing::error!(
                "cannot record the conversion of {}: {e}",
                escaped(&file.path)
            ),
        }
    }

    fn converted(&mut self) {
        if let Some(record) = self.conversion.take() {
            if let Err(e) = self.shared.store().finish_conversion(record) {
                tracing::error!("cannot record the end of a conversion: {e}");
            }
        }
    }

    fn after_chunk(&mut self, progress: &Progress) {
        self.shared.add_moved(self.disk, progress.chunk_bytes);
        self.back_from_kernel();
        // Shown as how far through the file the move is, resumed or not.
        self.shared
            .set_moved(self.disk, progress.offset_bytes.min(self.job.size_bytes));
        // Only a committed position is saved: after a power cut, moves past
        // it may be undone, and a resume must redo them.
        if progress.durable {
            save_cursor(self.shared, self.job, progress.next_block);
        }
    }
}

fn save_cursor(shared: &Shared, job: &Job, next_block: u64) {
    if let Err(e) = shared.store().save_cursor(job.id, next_block) {
        tracing::warn!(
            "job {}: cannot save progress ({e}); a restart redoes more of it",
            job.id
        );
    }
}

/// Carries out what the lifecycle decides after `attempt`.
fn record(shared: &Shared, job: &Job, path: &std::path::Path, attempt: Attempt, quiet_secs: u64) {
    let decision = lifecycle::decide(attempt, Counters::of(job), shared.now(), quiet_secs);
    say(job, path, &decision);
    match decision {
        Decision::Retry { at, wait } => {
            if let Wait::Interrupted { next_block } = wait {
                // The mover committed the file before stopping.
                save_cursor(shared, job, next_block);
            }
            retry(shared, job, &wait, at);
        }
        Decision::Finish { history, .. } => finish(shared, job, &history),
        Decision::Drop { why } => drop_job(shared, job, why),
    }
}

/// Tells the operator what became of the job.
fn say(job: &Job, path: &std::path::Path, decision: &Decision) {
    let id = job.id;
    let path = escaped(&path);
    match decision {
        Decision::Retry { wait, .. } => match wait {
            Wait::Interrupted { next_block } => {
                tracing::info!("job {id} {path} stopped at block {next_block}; it continues later")
            }
            Wait::Busy => tracing::info!(
                "{path} is busy under a writer; trying again in {BUSY_RETRY_SECS} s"
            ),
            Wait::FilesystemTrouble(e) => tracing::warn!(
                "{path}: {}; trying again in {FS_TROUBLE_RETRY_SECS} s",
                escaped_display(e)
            ),
            Wait::ReadOnly => tracing::warn!(
                "{path}: the filesystem is mounted read-only; trying again in {FS_TROUBLE_RETRY_SECS} s"
            ),
            Wait::RecentlyWritten {
                ago_secs,
                wait_secs,
            } => tracing::debug!(
                "{path} was written {ago_secs} s ago; trying again in {wait_secs} s"
            ),
            Wait::ShortOfSpace { reason, wait } => tracing::warn!(
                "{path}: {}; trying again in {SPACE_RETRY_SECS} s (attempt {wait} of {MAX_SPACE_WAITS})",
                escaped_display(reason)
            ),
            Wait::Failed { reason, failure } => tracing::warn!(
                "failed {path} (attempt {failure}): {}; trying again later",
                escaped_display(reason)
            ),
            Wait::Pressure | Wait::NotMounted | Wait::OpenFailed(_) | Wait::DryRun => {}
        },
        Decision::Finish { ending, .. } => match ending {
            Ending::Defragmented(moved) => tracing::info!(
                "{} {path}: extents {} -> {} ({} moved)",
                if moved.converted {
                    "converted and defragmented"
                } else {
                    "defragmented"
                },
                moved.before.extents,
                moved.after.extents,
                crate::outcome::Size(moved.bytes_moved)
            ),
            Ending::Skipped(reason) => {
                tracing::info!("skipped {path}: {}", escaped_display(reason))
            }
            Ending::WriterOutpaced(reason) => {
                tracing::warn!("not defragmented {path}: {}", escaped_display(reason))
            }
            Ending::GaveUp(reason) => tracing::warn!(
                "failed {path} for the last time: {}",
                escaped_display(reason)
            ),
            Ending::ConvertedOnly(reason) => tracing::info!(
                "converted {path} to extents; not defragmented: it {}",
                escaped_display(reason)
            ),
        },
        // Logged by `drop_job`, with the path it finds.
        Decision::Drop { .. } => {}
    }
}

/// Records a finished job, and what it did to its filesystem.
fn finish(shared: &Shared, job: &Job, finished: &Finished) {
    let outcome = finished.outcome;
    shared
        .metrics
        .count_file(outcome.as_str(), finished.reason_code.as_deref());
    let removed = finished.extents_after.map_or(0, |after| {
        finished
            .extents_before
            .unwrap_or(job.extents_before)
            .saturating_sub(after)
    });
    shared.metrics.extents_removed.inc_by(removed);
    record_activity(shared, job, outcome, removed, finished.bytes_moved);
    if let Err(e) = shared.store().finish_job(job.id, finished) {
        tracing::error!("job {}: cannot record its outcome: {e}", job.id);
    }
}

/// What a finished job did to its filesystem: its fragmentation record
/// falls by the extents removed, and the day's activity counts it. These
/// are figures for people: one lost in a crash costs nothing.
fn record_activity(
    shared: &Shared,
    job: &Job,
    outcome: HistoryOutcome,
    removed_extents: u64,
    bytes_moved: u64,
) {
    let store = shared.store();
    if let Err(e) = store.extents_removed(job.file.fs_uuid, &job.path_hint, removed_extents) {
        tracing::warn!(
            "job {}: cannot update the fragmentation record: {e}",
            job.id
        );
    }
    let done = Activity {
        files_defragmented: u64::from(outcome == HistoryOutcome::Defragmented),
        bytes_moved,
    };
    if done != Activity::default() {
        if let Err(e) = store.count_activity(job.file.fs_uuid, local_midnight(), &done) {
            tracing::warn!("job {}: cannot count it in the day's activity: {e}", job.id);
        }
    }
}

fn retry(shared: &Shared, job: &Job, wait: &Wait, at: i64) {
    match shared
        .store()
        .retry_later(job.id, &wait.why(), at, wait.counted())
    {
        Ok(()) => {}
        // Its filesystem was dropped meanwhile (unmounted, remounted
        // read-only): its queue went with it.
        Err(crate::store::StoreError::JobGone(_)) => {
            tracing::debug!("job {}: gone from the queue meanwhile", job.id);
        }
        Err(e) => tracing::error!("job {}: cannot put it back in the queue: {e}", job.id),
    }
}

fn drop_job(shared: &Shared, job: &Job, why: &str) {
    let path = shared.covered_fs(job.file.fs_uuid).map_or_else(
        || job.path_hint.clone(),
        |fs| fs.mount_point.join(&job.path_hint),
    );
    tracing::info!("dropped job {} {}: {why}", job.id, escaped(&path));
    shared.metrics.count_file("dropped", None);
    if let Err(e) = shared.store().drop_job(job.id, why) {
        tracing::error!("job {}: cannot drop it: {e}", job.id);
    }
}
