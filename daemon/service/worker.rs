//! One worker thread per disk: takes the most urgent job on that disk's
//! filesystems, checks it is still the same file, moves it chunk by chunk
//! under the throttle (its thread in the idle I/O class), and records the
//! chunk cursor after every chunk so a crash redoes at most one chunk.
//! Between jobs it holds no file descriptor, so `umount` works.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crate::convert::Converting;
use crate::escape::{escaped, escaped_display};
use crate::inspect::Filesystems;
use crate::mounts::{reopen_root, DiskId};
use crate::mover::{defragment, Control, MoveOptions, Progress, Supervisor};
use crate::outcome::{FailReason, Outcome, SkipReason};
use crate::store::{Activity, FileId, Finished, HistoryOutcome, Job, SettledWhy};

use super::candidates::target_for;
use super::shared::{local_midnight, MovingNow, Shared};
use super::status::human_duration;
use super::unix_now;

/// How long an idle worker sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_secs(30);
/// How long a job waits after a failure before it is tried again.
const RETRY_AFTER_SECS: i64 = 600;
/// How long a job waits when I/O pressure holds moves back at its start.
const PRESSURE_RETRY_SECS: i64 = 10;
/// How long a job whose file was busy under a writer waits: it passes soon.
const BUSY_RETRY_SECS: i64 = 30;
/// How long a job waits after an I/O error or a read-only filesystem: most
/// often the filesystem was shut down or remounted, and the next attempt
/// finds it back (or finds it gone and drops the job).
const FS_TROUBLE_RETRY_SECS: i64 = 30;
/// How long a job waits when the filesystem is short of free space (another
/// writer filled it): space often comes back soon, a log rotated, a
/// temporary file deleted.
const SPACE_RETRY_SECS: i64 = 30;
/// Attempts before a failing job is given up (and a job short of space
/// recorded as skipped; the next crawl finds the file again).
const MAX_ATTEMPTS: u32 = 5;
/// How long a move held back by I/O pressure waits in one go, before it
/// gives its file back and tries again later.
const PRESSURE_WAIT: Duration = Duration::from_secs(10);

/// Runs the worker of `disk` until shutdown.
pub fn run(shared: Arc<Shared>, disk: DiskId) {
    if let Err(e) = crate::ext4::set_current_thread_idle() {
        tracing::warn!(
            "worker {}: cannot set the idle I/O class ({e}); moves run at normal I/O priority",
            disk.0
        );
    }
    while !shared.shutting_down() {
        let ticket = shared.wake_ticket();
        if shared.paused() {
            shared.idle_since(ticket, Duration::from_secs(1));
            continue;
        }
        // Outside the maintenance windows the service only watches and queues.
        let closed_for = shared.until_window();
        if !closed_for.is_zero() {
            shared.idle_since(ticket, closed_for.min(Duration::from_secs(60)));
            continue;
        }
        // With the device's write budget spent, moves wait for the next day.
        if let Some(until) = shared.budget_spent_until(&disk) {
            let left = u64::try_from(until - unix_now()).unwrap_or(0).max(1);
            shared.idle_since(
                ticket,
                Duration::from_secs(left).min(Duration::from_secs(60)),
            );
            continue;
        }
        let uuids: Vec<String> = shared
            .covered()
            .into_values()
            .filter(|fs| fs.disk == disk)
            .map(|fs| fs.uuid)
            .collect();
        if uuids.is_empty() {
            // This disk's filesystems went away: the service retires the worker.
            return;
        }
        let job = match shared.store().next_job(&uuids, unix_now()) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!("worker {}: cannot read the queue: {e}", disk.0);
                shared.idle_since(ticket, IDLE);
                continue;
            }
        };
        match job {
            Some(job) => run_job(&shared, &disk, job),
            None => shared.idle_since(ticket, until_next_due(&shared, &uuids)),
        }
    }
}

/// How long to sleep when nothing is due: until the earliest queued job
/// is (a file put back for its quiet period), at most IDLE.
fn until_next_due(shared: &Shared, uuids: &[String]) -> Duration {
    match shared.store().next_due(uuids) {
        Ok(Some(due)) => {
            Duration::from_secs(u64::try_from(due - unix_now()).unwrap_or(0).max(1)).min(IDLE)
        }
        _ => IDLE,
    }
}

fn run_job(shared: &Shared, disk: &DiskId, job: Job) {
    let Some(fs) = shared.covered_fs(&job.file.fs_uuid) else {
        drop_job(shared, &job, "its filesystem is no longer covered");
        return;
    };
    let path = fs.mount_point.join(&job.path_hint);
    let Some(root) = reopen_root(&fs) else {
        retry(
            shared,
            &job,
            "its filesystem is not mounted where it was",
            RETRY_AFTER_SECS,
        );
        return;
    };
    let mut target = match target_for(&fs, root.as_fd(), &job.path_hint) {
        Ok(target) => target,
        Err(crate::ext4::Error::NotFound) => {
            drop_job(
                shared,
                &job,
                "the file was deleted or renamed since it was queued",
            );
            return;
        }
        Err(e) => {
            retry(shared, &job, &e.to_string(), RETRY_AFTER_SECS);
            return;
        }
    };
    drop(root);
    target.expected_identity = Some((job.file.ino, job.file.generation));
    let settings = shared.settings();
    let options = MoveOptions {
        chunk_bytes: settings.throttle.chunk_bytes.get(),
        reserve_percent: settings.policy.reserve_percent,
        dry_run: false,
        quiet_period: Some(settings.policy.quiet_period),
        convert_block_mapped: settings.policy.convert_block_mapped,
    };
    // Held back by I/O pressure: give the job back before a donor is
    // allocated, since allocating and freeing one per attempt fragments
    // the free space that the next attempt needs.
    if shared.pace() == 0 {
        shared.clear_slowed();
        retry(shared, &job, "I/O pressure", PRESSURE_RETRY_SECS);
        return;
    }
    let mut filesystems = Filesystems::default();
    let mut supervisor = JobSupervisor {
        shared,
        conversion: None,
        announced: false,
        job: &job,
        disk,
        path: &path,
    };
    // The file as it was before the service opened it: if nobody writes it
    // after the move, it is not considered again (see `settle`).
    let before_open = crate::ext4::stat_beneath(target.dir.as_fd(), &target.name)
        .ok()
        .filter(|stat| stat.ino == job.file.ino);
    let total_bytes = job.size_bytes;
    // A resumed move goes on from its cursor: the status shows that much
    // as done once it is under way, not 0%.
    let resumed_bytes = job
        .next_block
        .saturating_mul(u64::from(fs.info.superblock.block_size))
        .min(total_bytes);
    shared.set_moving(
        disk,
        Some(MovingNow::checking(
            path.clone(),
            resumed_bytes,
            total_bytes,
        )),
    );
    shared.start_ramp(disk);
    let outcome = defragment(
        &target,
        &mut filesystems,
        &options,
        job.next_block,
        &mut supervisor,
    );
    shared.end_ramp(disk);
    shared.set_moving(disk, None);
    shared.clear_slowed();
    if let Some(stat) = before_open {
        settle(shared, &job, &stat, &outcome);
    }
    record(
        shared,
        &job,
        &path,
        outcome,
        settings.policy.quiet_period.as_secs(),
    );
}

/// Records that the service is done with the file after `outcome`, as it
/// was (`stat`) before the service opened it: its own open for writing and
/// its move raise write events, and a file unchanged since is not looked
/// at again until someone writes it (or, for a file not worth a move, the
/// next crawl pass).
fn settle(shared: &Shared, job: &Job, stat: &crate::ext4::EntryStat, outcome: &Outcome) {
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
    if let Err(e) = shared.store().settle(&job.file, stat.mtime, stat.size, why) {
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
        if self.shared.shutting_down()
            || self.shared.paused()
            || !self.shared.until_window().is_zero()
            || self.shared.budget_spent_until(self.disk).is_some()
        {
            return Control::Stop;
        }
        // Slowed by I/O pressure through the shared rate; held back
        // entirely only where the floor is 0 and pressure is full.
        let mut waited = Duration::ZERO;
        while self.shared.pace_on(self.disk) == 0 {
            if waited >= PRESSURE_WAIT || self.shared.shutting_down() || self.shared.paused() {
                return Control::Stop;
            }
            self.shared.sleep(Duration::from_millis(500));
            waited += Duration::from_millis(500);
        }
        let wait = self.shared.throttle(bytes);
        if !wait.is_zero() {
            self.shared.sleep(wait);
        }
        if self.shared.shutting_down() {
            Control::Stop
        } else {
            self.shared.kernel_has_it(self.disk);
            Control::Continue
        }
    }

    fn converting(&mut self, file: &Converting<'_>) {
        tracing::warn!(
            "converting {} to extents (EXT4_IOC_MIGRATE is not crash-safe; the conversion is recorded)",
            escaped(&file.path)
        );
        let id = FileId {
            fs_uuid: self.job.file.fs_uuid.clone(),
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

fn record(shared: &Shared, job: &Job, path: &std::path::Path, outcome: Outcome, quiet_secs: u64) {
    let id = job.id;
    match outcome {
        Outcome::Defragmented(moved) => {
            tracing::info!(
                "{} {}: extents {} -> {} ({} moved)",
                if moved.converted {
                    "converted and defragmented"
                } else {
                    "defragmented"
                },
                escaped(&path),
                moved.before.extents,
                moved.after.extents,
                crate::outcome::Size(moved.bytes_moved)
            );
            finish(
                shared,
                job,
                HistoryOutcome::Defragmented,
                None,
                None,
                (Some(moved.before.extents), Some(moved.after.extents)),
                moved.bytes_moved,
            );
        }
        Outcome::Interrupted { next_block, .. } => {
            tracing::info!(
                "job {id} {} stopped at block {next_block}; it continues later",
                escaped(&path)
            );
            // The mover committed the file before stopping.
            save_cursor(shared, job, next_block);
            retry(shared, job, "interrupted", 0);
        }
        Outcome::Failed {
            reason: FailReason::Kernel(crate::ext4::Error::Busy),
            ..
        } => {
            tracing::info!(
                "{} is busy under a writer; trying again in {BUSY_RETRY_SECS} s",
                escaped(&path)
            );
            retry(shared, job, "busy", BUSY_RETRY_SECS);
        }
        Outcome::Failed {
            reason: FailReason::Kernel(e @ (crate::ext4::Error::Io | crate::ext4::Error::ReadOnly)),
            ..
        } => {
            tracing::warn!(
                "{}: {e}; trying again in {FS_TROUBLE_RETRY_SECS} s",
                escaped(&path)
            );
            retry(shared, job, "filesystem trouble", FS_TROUBLE_RETRY_SECS);
        }
        // Remounted read-only since the job was queued: most often for a
        // while (maintenance, an error the operator is looking at).
        Outcome::Skipped {
            reason: SkipReason::ReadOnly,
            ..
        } => {
            tracing::warn!(
                "{}: the filesystem is mounted read-only; trying again in {FS_TROUBLE_RETRY_SECS} s",
                escaped(&path)
            );
            retry(shared, job, "read-only", FS_TROUBLE_RETRY_SECS);
        }
        Outcome::Skipped {
            reason: reason @ SkipReason::NotEnoughFreeSpace { .. },
            ..
        } if job.attempts < MAX_ATTEMPTS => short_of_space(shared, job, path, &reason),
        Outcome::Failed {
            reason: reason @ FailReason::Kernel(crate::ext4::Error::NoSpace),
            ..
        } if job.attempts < MAX_ATTEMPTS => short_of_space(shared, job, path, &reason),
        Outcome::Skipped {
            reason: SkipReason::RecentlyWritten { ago_secs },
            ..
        } => {
            let wait = i64::try_from(quiet_secs.saturating_sub(ago_secs))
                .unwrap_or(0)
                .max(1);
            tracing::debug!(
                "{} was written {ago_secs} s ago; trying again in {wait} s",
                escaped(&path)
            );
            retry(shared, job, "recently written", wait);
        }
        Outcome::Skipped {
            reason: SkipReason::Vanished | SkipReason::Replaced,
            ..
        } => {
            drop_job(
                shared,
                job,
                "the file was deleted or replaced since it was queued",
            );
        }
        Outcome::Skipped { reason, before } => {
            tracing::info!("skipped {}: {}", escaped(&path), escaped_display(&reason));
            finish(
                shared,
                job,
                HistoryOutcome::Skipped,
                Some(reason.code()),
                Some(reason.to_string()),
                (before.map(|b| b.extents), None),
                0,
            );
        }
        // Recorded at once, with what the move did: trying again on a timer
        // while the writer appends would only move the file again for
        // nothing. The next write the service sees (or the next crawl)
        // queues it again, for after its quiet period.
        Outcome::Failed {
            reason: reason @ FailReason::WriterOutpaced { .. },
            before,
            bytes_moved,
        } => {
            tracing::warn!(
                "not defragmented {}: {}",
                escaped(&path),
                escaped_display(&reason)
            );
            finish(
                shared,
                job,
                HistoryOutcome::Failed,
                Some(reason.code()),
                Some(reason.to_string()),
                (before.map(|b| b.extents), reason.extents_after()),
                bytes_moved,
            );
        }
        Outcome::Failed {
            reason,
            before,
            bytes_moved,
        } => {
            if job.attempts >= MAX_ATTEMPTS {
                tracing::warn!(
                    "failed {} for the last time: {}",
                    escaped(&path),
                    escaped_display(&reason)
                );
                finish(
                    shared,
                    job,
                    HistoryOutcome::Failed,
                    Some(reason.code()),
                    Some(reason.to_string()),
                    (before.map(|b| b.extents), reason.extents_after()),
                    bytes_moved,
                );
            } else {
                tracing::warn!(
                    "failed {} (attempt {}): {}; trying again later",
                    escaped(&path),
                    job.attempts,
                    escaped_display(&reason)
                );
                retry(shared, job, &reason.to_string(), RETRY_AFTER_SECS);
            }
        }
        Outcome::Converted { reason, before } => {
            tracing::info!(
                "converted {} to extents; not defragmented: it {}",
                escaped(&path),
                escaped_display(&reason)
            );
            let why = format!("converted to extents, but not defragmented: it {reason}");
            finish(
                shared,
                job,
                HistoryOutcome::Skipped,
                Some("converted_only"),
                Some(why),
                (Some(before.extents), None),
                0,
            );
        }
        Outcome::WouldDefragment(_) => retry(shared, job, "dry run", 0),
    }
}

/// Records a finished job. `extents` are the file's extents at the start
/// of the attempt and at its end, as the move measured them (`None` where
/// it did not: the job's queued count stands in for the start).
fn finish(
    shared: &Shared,
    job: &Job,
    outcome: HistoryOutcome,
    reason_code: Option<&str>,
    reason: Option<String>,
    extents: (Option<u64>, Option<u64>),
    bytes_moved: u64,
) {
    let (extents_before, extents_after) = extents;
    shared.metrics.count_file(outcome.as_str(), reason_code);
    let removed = extents_after.map_or(0, |after| {
        extents_before
            .unwrap_or(job.extents_before)
            .saturating_sub(after)
    });
    shared.metrics.extents_removed.inc_by(removed);
    record_activity(shared, job, outcome, removed, bytes_moved);
    let finished = Finished {
        outcome,
        reason_code: reason_code.map(str::to_string),
        reason,
        extents_before,
        extents_after,
        bytes_moved,
    };
    if let Err(e) = shared.store().finish_job(job.id, &finished) {
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
    if let Err(e) = store.extents_removed(&job.file.fs_uuid, &job.path_hint, removed_extents) {
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
        if let Err(e) = store.count_activity(&job.file.fs_uuid, local_midnight(), &done) {
            tracing::warn!("job {}: cannot count it in the day's activity: {e}", job.id);
        }
    }
}

/// The filesystem is short of space now (another writer filled it): the
/// job waits for it to come back, a few times.
fn short_of_space(shared: &Shared, job: &Job, path: &std::path::Path, why: &dyn std::fmt::Display) {
    tracing::warn!(
        "{}: {}; trying again in {SPACE_RETRY_SECS} s (attempt {} of {MAX_ATTEMPTS})",
        escaped(&path),
        escaped_display(why),
        job.attempts
    );
    retry(shared, job, "short of free space", SPACE_RETRY_SECS);
}

fn retry(shared: &Shared, job: &Job, why: &str, after_secs: i64) {
    match shared
        .store()
        .retry_later(job.id, why, unix_now() + after_secs)
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
    let path = shared.covered_fs(&job.file.fs_uuid).map_or_else(
        || job.path_hint.clone(),
        |fs| fs.mount_point.join(&job.path_hint),
    );
    tracing::info!("dropped job {} {}: {why}", job.id, escaped(&path));
    shared.metrics.count_file("dropped", None);
    if let Err(e) = shared.store().drop_job(job.id, why) {
        tracing::error!("job {}: cannot drop it: {e}", job.id);
    }
}
