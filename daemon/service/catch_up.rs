//! Finding the files written while writes were not seen: after a kernel
//! queue overflow, and after the service was down. A stat-only walk of the
//! filesystem (no file opened, no extent map read) picks the files changed
//! since a point in time; they then wait for their quiet period like any
//! written file. The walk follows the one set of rules of `walk` (no
//! symlink followed, no mount crossed, lost+found left alone).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use crate::mounts::Covered;
use crate::sys;
use crate::walk::{walk, Depth, Found};

/// Changes this close before `since` are taken too: timestamps are whole
/// seconds and a write's ctime may trail the event that reported it.
const SLACK_SECS: i64 = 2;

/// What a catch-up walk saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub files: u64,
    pub changed: u64,
}

/// Calls `changed` with the path below the mount point and the change
/// time of every regular file of `fs` changed (ctime or mtime) at or after
/// `since` (unix seconds), until `stop` says so.
pub fn changed_since(
    fs: &Covered,
    since: i64,
    stop: &dyn Fn() -> bool,
    changed: &mut dyn FnMut(PathBuf, i64),
) -> Scanned {
    let started = Instant::now();
    let mut scanned = Scanned::default();
    let threshold = since - SLACK_SECS;
    let result = walk(&fs.mount_point, Depth::Recursive, &mut |found| {
        if stop() {
            return;
        }
        let Found::File(target) = found else { return };
        scanned.files += 1;
        let Ok(stat) = sys::stat_beneath(target.dir.as_fd(), &target.name) else {
            return;
        };
        let changed_at = stat.ctime.max(stat.mtime);
        if stat.dev != fs.dev || changed_at < threshold {
            return;
        }
        if let Ok(rel) = target.path.strip_prefix(&fs.mount_point) {
            scanned.changed += 1;
            changed(rel.to_path_buf(), changed_at);
        }
    });
    if let Err(e) = result {
        tracing::warn!(
            "catching up on {}: cannot walk it ({e}); the crawl finds what was missed",
            crate::escape::escaped(&fs.mount_point)
        );
    }
    tracing::debug!(
        "catch-up of {}: {} files looked at, {} changed, in {:.1} s",
        crate::escape::escaped(&fs.mount_point),
        scanned.files,
        scanned.changed,
        started.elapsed().as_secs_f64()
    );
    scanned
}
