//! The wall clock, read in one place: unix seconds, as the store, the
//! schedules and the reports keep time. Logic that decides by time takes
//! the time as an argument (see `Store::with_clock`); only the shells that
//! carry it out read the clock here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch now; a clock set before 1970 reads as 0.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::unix_now;

    #[test]
    fn reads_a_time_after_this_code_was_written() {
        // 2026-01-01: a clock behind that is broken, not a real "now".
        assert!(unix_now() > 1_767_225_600);
    }
}
