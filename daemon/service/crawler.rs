//! The background crawl of one filesystem: a pass walks every file in a
//! fixed order, measures it and queues those worth moving, paced in files
//! per second; its cursor is saved in batches (every `SAVE_EVERY_FILES`
//! files or `SAVE_EVERY`, and when the walk stops), so a restarted service
//! continues the pass instead of starting over, redoing at most one batch. What it maps adds
//! up to the filesystem's fragmentation, recorded when the pass ends. A
//! new pass starts every `crawl.interval`. No file descriptor is held
//! while it sleeps.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crawl_cursor::TreeCursor;
use crate::escape::escaped;
use crate::filesystem::FsUuid;
use crate::mounts::{reopen_root, Covered};
use crate::store::Tally;
use crate::sys;

use super::candidates::{consider_and_measure, Considered, Urgency};
use super::shared::Shared;
use super::unix_now;

/// The cursor is saved after this many files...
const SAVE_EVERY_FILES: u64 = 256;
/// ...or this long after the last save, whichever comes first. A crash
/// redoes what was assessed since: cheap (a FIEMAP per file), and never a
/// file skipped, since the saved cursor is always at or before the walk.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// Runs the crawl of `uuid` until shutdown or until the filesystem is no
/// longer covered.
pub fn run(shared: Arc<Shared>, uuid: FsUuid) {
    while !shared.shutting_down() {
        let ticket = shared.wake_ticket();
        let Some(fs) = shared.covered_fs(uuid) else {
            return;
        };
        let interval = shared.settings().crawl.interval;
        let cursor = match shared.store().crawl_cursor(uuid) {
            Ok(cursor) => cursor,
            Err(e) => {
                tracing::error!(
                    "crawl of {}: cannot read its cursor: {e}",
                    escaped(&fs.mount_point)
                );
                shared.sleep(Duration::from_secs(60));
                continue;
            }
        };
        let resume = match cursor {
            Some(c) if c.pass_finished_at.is_none() => Some(c),
            Some(c) => {
                let due = c.pass_started_at + i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
                let now = unix_now();
                if now < due {
                    // Looks again at least once a minute, and at once on
                    // a reload or a change of the covered filesystems (a
                    // remount may have made the next pass due now).
                    shared.idle_since(
                        ticket,
                        Duration::from_secs(u64::try_from(due - now).unwrap_or(1).min(60)),
                    );
                    continue;
                }
                None
            }
            None => None,
        };
        let after = match resume {
            Some(c) => {
                tracing::info!(
                    "crawl of {}: continuing pass {} after {} ({} files assessed so far)",
                    escaped(&fs.mount_point),
                    c.pass_id,
                    escaped(&c.cursor),
                    c.files_assessed
                );
                Some((c.cursor, c.files_assessed))
            }
            None => match shared.store().start_pass(uuid, unix_now()) {
                Ok(c) => {
                    tracing::info!(
                        "crawl of {}: starting pass {}",
                        escaped(&fs.mount_point),
                        c.pass_id
                    );
                    None
                }
                Err(e) => {
                    tracing::error!(
                        "crawl of {}: cannot start a pass: {e}",
                        escaped(&fs.mount_point)
                    );
                    shared.sleep(Duration::from_secs(60));
                    continue;
                }
            },
        };
        crawl_pass(&shared, &fs, after);
    }
}

/// Walks the rest of a pass; returns when it is done, or on shutdown.
fn crawl_pass(shared: &Shared, fs: &Covered, after: Option<(PathBuf, u64)>) {
    let (resume_after, assessed) = match after {
        Some((cursor, n)) => (Some(cursor), n),
        None => (None, 0),
    };
    let mut walk = TreeCursor::new(resume_after);
    let started = Instant::now();
    let mut unsaved = Unsaved::new(assessed, started);
    let mut queued = 0u64;
    let mut paced = 0u64;
    let finished = loop {
        if shared.shutting_down() || shared.covered_fs(fs.uuid).is_none() {
            break false;
        }
        let Some(root) = reopen_root(fs) else {
            tracing::info!(
                "crawl of {}: the filesystem is gone; stopping",
                escaped(&fs.mount_point)
            );
            break false;
        };
        let Some(rel) = walk.next_file(root.as_fd()) else {
            break true;
        };
        let (outcome, measured) =
            consider_and_measure(shared, fs, root.as_fd(), &rel, Urgency::Crawl, unix_now());
        drop(root);
        match &outcome {
            Considered::Queued { priority } => {
                queued += 1;
                tracing::debug!(
                    "crawl: assessed {}: queued (priority {priority:.1})",
                    escaped(&rel)
                );
            }
            Considered::Left(why) => tracing::debug!(
                "crawl: assessed {}: left ({}): {why}",
                escaped(&rel),
                why.code()
            ),
            other => tracing::debug!("crawl: assessed {}: {other:?}", escaped(&rel)),
        }
        unsaved.assessed(rel, measured.unwrap_or_default());
        if unsaved.due(Instant::now()) {
            save(shared, fs, &mut unsaved);
        }
        // Pace: never ahead of files_per_second since this run started.
        paced += 1;
        let rate = f64::from(shared.settings().crawl.files_per_second.get());
        let due = Duration::from_secs_f64(paced as f64 / rate);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            shared.sleep(ahead);
        }
    };
    // At a stop too: the next run continues from here, not from the last
    // batch.
    save(shared, fs, &mut unsaved);
    if !finished {
        return;
    }
    tracing::info!(
        "crawl of {}: pass done, {} files assessed, {queued} queued in {:.0} s",
        escaped(&fs.mount_point),
        unsaved.files_assessed,
        started.elapsed().as_secs_f64()
    );
    say_uncovered_subvolumes(shared, fs, walk.other_subvolumes());
    shared.metrics.last_crawl_timestamp.set(unix_now());
    if let Err(e) = shared.store().prune_settled(crate::store::MAX_SETTLED) {
        tracing::warn!("cannot prune the record of settled files: {e}");
    }
    if let Err(e) = shared.store().finish_pass(fs.uuid, unix_now()) {
        tracing::warn!(
            "crawl of {}: cannot record the end of the pass: {e}",
            escaped(&fs.mount_point)
        );
    }
}

/// Says which btrfs subvolumes below `fs` the pass went by that nothing
/// covers: writable, and not mounted where the service covers them. A
/// walk never leaves its subvolume, so their files are left until they
/// are mounted (read-only ones, snapshots, cannot be changed anyway).
fn say_uncovered_subvolumes(shared: &Shared, fs: &Covered, others: &[PathBuf]) {
    const NAMED: usize = 3;
    if others.is_empty() {
        return;
    }
    let Some(root) = reopen_root(fs) else {
        return;
    };
    let uncovered: Vec<&PathBuf> = others
        .iter()
        .filter(|rel| {
            let Ok(dir) = sys::open_dir_beneath(root.as_fd(), rel) else {
                return false;
            };
            crate::btrfs::subvolume(dir.as_fd())
                .is_ok_and(|sub| !sub.read_only && shared.covered_fs(FsUuid(sub.uuid)).is_none())
        })
        .collect();
    if uncovered.is_empty() {
        return;
    }
    let named: Vec<String> = uncovered
        .iter()
        .take(NAMED)
        .map(|rel| escaped(&fs.mount_point.join(rel)).to_string())
        .collect();
    tracing::info!(
        "crawl of {}: {} btrfs subvolume(s) below it are not covered: a crawl stays in its \
         subvolume ({}{}); mount one (or name its mount point in [[filesystem]]) to have \
         it covered",
        escaped(&fs.mount_point),
        uncovered.len(),
        named.join(", "),
        if uncovered.len() > NAMED { ", ..." } else { "" }
    );
}

/// Saves the cursor and the tally of what was mapped since the last save,
/// in one transaction: after a crash the files past the saved cursor are
/// assessed, and counted, again, and none twice.
fn save(shared: &Shared, fs: &Covered, unsaved: &mut Unsaved) {
    let Some(cursor) = unsaved.cursor.as_deref() else {
        return;
    };
    match shared.store().save_crawl_cursor(
        fs.uuid,
        cursor,
        unsaved.files_assessed,
        &unsaved.measured,
    ) {
        Ok(()) => unsaved.saved(Instant::now()),
        // Kept, and tried again with the next batch.
        Err(e) => tracing::warn!(
            "crawl of {}: cannot save its cursor: {e}",
            escaped(&fs.mount_point)
        ),
    }
}

/// The crawl's progress since its cursor was last saved.
#[derive(Debug)]
struct Unsaved {
    /// The last file assessed; None when nothing was since the last save.
    cursor: Option<PathBuf>,
    /// In the whole pass, saved or not.
    files_assessed: u64,
    /// What was mapped since the last save.
    measured: Tally,
    files: u64,
    last_saved: Instant,
}

impl Unsaved {
    fn new(files_assessed: u64, now: Instant) -> Self {
        Unsaved {
            cursor: None,
            files_assessed,
            measured: Tally::default(),
            files: 0,
            last_saved: now,
        }
    }

    fn assessed(&mut self, rel: PathBuf, measured: Tally) {
        self.cursor = Some(rel);
        self.files_assessed += 1;
        self.files += 1;
        self.measured.files += measured.files;
        self.measured.extents += measured.extents;
        self.measured.ideal_extents += measured.ideal_extents;
    }

    /// Whether the batch is big or old enough to be saved now.
    fn due(&self, now: Instant) -> bool {
        self.files >= SAVE_EVERY_FILES
            || (self.files > 0 && now.saturating_duration_since(self.last_saved) >= SAVE_EVERY)
    }

    fn saved(&mut self, now: Instant) {
        self.cursor = None;
        self.measured = Tally::default();
        self.files = 0;
        self.last_saved = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_by_count_or_by_time() {
        let t0 = Instant::now();
        let mut unsaved = Unsaved::new(10, t0);
        assert!(!unsaved.due(t0 + SAVE_EVERY), "nothing to save");
        for i in 0..SAVE_EVERY_FILES - 1 {
            unsaved.assessed(PathBuf::from(format!("f{i}")), Tally::of_file(3, 1));
        }
        assert!(!unsaved.due(t0));
        assert!(unsaved.due(t0 + SAVE_EVERY), "old enough");
        unsaved.assessed(PathBuf::from("last"), Tally::default());
        assert!(unsaved.due(t0), "big enough");
        assert_eq!(
            unsaved.cursor.as_deref(),
            Some(std::path::Path::new("last"))
        );
        assert_eq!(unsaved.files_assessed, 10 + SAVE_EVERY_FILES);
        assert_eq!(unsaved.measured.files, SAVE_EVERY_FILES - 1);
        assert_eq!(unsaved.measured.extents, 3 * (SAVE_EVERY_FILES - 1));
    }

    #[test]
    fn a_save_starts_a_new_batch_and_keeps_the_pass_count() {
        let t0 = Instant::now();
        let mut unsaved = Unsaved::new(0, t0);
        unsaved.assessed(PathBuf::from("a"), Tally::of_file(2, 1));
        unsaved.saved(t0);
        assert_eq!(unsaved.cursor, None);
        assert_eq!(unsaved.measured, Tally::default());
        assert!(!unsaved.due(t0 + SAVE_EVERY));
        unsaved.assessed(PathBuf::from("b"), Tally::default());
        assert_eq!(unsaved.files_assessed, 2);
    }
}
