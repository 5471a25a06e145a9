//! The background crawl of one filesystem: a pass walks every file in a
//! fixed order, measures it and queues those worth moving, paced in files
//! per second; its cursor is saved after every file, so a restarted
//! service continues the pass instead of starting over. What it maps adds
//! up to the filesystem's fragmentation, recorded when the pass ends. A
//! new pass starts every `crawl.interval`. No file descriptor is held
//! while it sleeps.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crawl_cursor::TreeCursor;
use crate::escape::escaped;
use crate::mounts::{reopen_root, Covered};

use super::candidates::{consider_and_measure, Considered, Urgency};
use super::shared::Shared;
use super::unix_now;

/// Runs the crawl of `uuid` until shutdown or until the filesystem is no
/// longer covered.
pub fn run(shared: Arc<Shared>, uuid: String) {
    while !shared.shutting_down() {
        let ticket = shared.wake_ticket();
        let Some(fs) = shared.covered_fs(&uuid) else {
            return;
        };
        let interval = shared.settings().crawl.interval;
        let cursor = match shared.store().crawl_cursor(&uuid) {
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
            None => match shared.store().start_pass(&uuid, unix_now()) {
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
    let (resume_after, mut assessed) = match after {
        Some((cursor, n)) => (Some(cursor), n),
        None => (None, 0),
    };
    let mut walk = TreeCursor::new(resume_after);
    let mut queued = 0u64;
    let started = Instant::now();
    let mut paced = 0u64;
    loop {
        if shared.shutting_down() || shared.covered_fs(&fs.uuid).is_none() {
            return;
        }
        let Some(root) = reopen_root(fs) else {
            tracing::info!(
                "crawl of {}: the filesystem is gone; stopping",
                escaped(&fs.mount_point)
            );
            return;
        };
        let Some(rel) = walk.next_file(root.as_fd()) else {
            break;
        };
        let (outcome, measured) =
            consider_and_measure(shared, fs, root.as_fd(), &rel, Urgency::Crawl, unix_now());
        drop(root);
        assessed += 1;
        match &outcome {
            Considered::Queued { priority } => {
                queued += 1;
                tracing::debug!(
                    "crawl: assessed {}: queued (priority {priority:.1})",
                    escaped(&rel)
                );
            }
            other => tracing::debug!("crawl: assessed {}: {other:?}", escaped(&rel)),
        }
        let measured = measured.unwrap_or_default();
        if let Err(e) = shared
            .store()
            .save_crawl_cursor(&fs.uuid, &rel, assessed, &measured)
        {
            tracing::warn!(
                "crawl of {}: cannot save its cursor: {e}",
                escaped(&fs.mount_point)
            );
        }
        // Pace: never ahead of files_per_second since this run started.
        paced += 1;
        let rate = f64::from(shared.settings().crawl.files_per_second.get());
        let due = Duration::from_secs_f64(paced as f64 / rate);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            shared.sleep(ahead);
        }
    }
    tracing::info!(
        "crawl of {}: pass done, {assessed} files assessed, {queued} queued in {:.0} s",
        escaped(&fs.mount_point),
        started.elapsed().as_secs_f64()
    );
    shared.metrics.last_crawl_timestamp.set(unix_now());
    if let Err(e) = shared.store().prune_settled(crate::store::MAX_SETTLED) {
        tracing::warn!("cannot prune the record of settled files: {e}");
    }
    if let Err(e) = shared.store().finish_pass(&fs.uuid, unix_now()) {
        tracing::warn!(
            "crawl of {}: cannot record the end of the pass: {e}",
            escaped(&fs.mount_point)
        );
    }
}
