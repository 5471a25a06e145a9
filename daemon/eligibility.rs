//! Whether a file may be moved at all: the one set of preconditions that
//! choosing a file (the service's candidates) and moving it (the mover, a
//! conversion) both apply, so that what is queued is what the mover would
//! accept. What its filesystem type forbids is its backend's answer; what
//! holds on every filesystem (in use, quiet period, free space) is here.
//!
//! It decides; it changes nothing.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::backend::Inspected;
use crate::outcome::{Refusal, SkipReason};
use crate::sys;

/// Why a file cannot be moved, from its flags, its map and its filesystem
/// (its backend's reasons).
pub fn refuse_unmovable(inspected: &Inspected) -> Result<(), SkipReason> {
    inspected.backend.refuse_unmovable(inspected)
}

/// Refuses a file in use: an active swapfile, or one written within
/// `quiet_period`. Shared by a move and a conversion.
pub fn refuse_in_use(
    inspected: &Inspected,
    quiet_period: Option<Duration>,
) -> Result<(), SkipReason> {
    if sys::is_active_swapfile(inspected.dev, inspected.ino) {
        return Err(SkipReason::Swapfile);
    }
    if let Some(quiet) = quiet_period {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ago_secs = now.saturating_sub(u64::try_from(inspected.mtime).unwrap_or(0));
        if ago_secs < quiet.as_secs() {
            return Err(SkipReason::RecentlyWritten { ago_secs });
        }
    }
    Ok(())
}

/// Refuses when `need` bytes would not leave `reserve_percent` of the
/// filesystem free.
pub fn check_free_space(
    fd: BorrowedFd<'_>,
    need: u64,
    reserve_percent: f64,
) -> Result<(), Refusal> {
    crate::backend::check_free_space(fd, need, reserve_percent)
}
