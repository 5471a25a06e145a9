//! How long a move held back waits before it gives its file back: each
//! kind of hold (others using the disk; I/O pressure or a slow disk) has its
//! own limit, counted from when that kind began, and all of them together
//! no more than the longer limit. Pure: the caller sleeps between ticks.

use std::time::Duration;

/// How long a move held back by I/O pressure (or a slow disk) waits in one
/// go, before it gives its file back and tries again later.
pub const PRESSURE_WAIT: Duration = Duration::from_secs(10);
/// How long a move waits in one go while others use its disk: longer,
/// since holding costs the disk nothing and giving the file back costs a
/// commit and a new check.
pub const YIELD_WAIT: Duration = Duration::from_secs(60);

/// The clock of one hold.
#[derive(Debug, Default)]
pub struct HoldClock {
    /// Whether the current kind is others using the disk; None before the
    /// first tick.
    for_others: Option<bool>,
    /// Since the current kind began.
    waited: Duration,
    in_all: Duration,
}

impl HoldClock {
    /// Whether to wait `step` more, held for others using the disk
    /// (`for_others`) or for pressure; counts the step when so.
    ///
    /// Pressure lingering a second after others stopped using the disk is
    /// a new, short hold, not the end of a long one: a move that had
    /// waited 20 s beside a reader was given back at once, when PSI still
    /// showed the reader's last second.
    pub fn wait_more(&mut self, for_others: bool, step: Duration) -> bool {
        if self.for_others != Some(for_others) {
            self.for_others = Some(for_others);
            self.waited = Duration::ZERO;
        }
        let limit = if for_others {
            YIELD_WAIT
        } else {
            PRESSURE_WAIT
        };
        if self.waited >= limit || self.in_all >= YIELD_WAIT {
            return false;
        }
        self.waited += step;
        self.in_all += step;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(500);

    fn ticks(clock: &mut HoldClock, for_others: bool, seconds: u64) -> bool {
        (0..seconds * 2).all(|_| clock.wait_more(for_others, STEP))
    }

    #[test]
    fn each_kind_of_hold_has_its_own_limit() {
        let mut clock = HoldClock::default();
        assert!(ticks(&mut clock, false, 10));
        assert!(!clock.wait_more(false, STEP), "10 s of pressure: give back");
        let mut clock = HoldClock::default();
        assert!(ticks(&mut clock, true, 59));
        assert!(clock.wait_more(true, STEP));
        assert!(clock.wait_more(true, STEP));
        assert!(
            !clock.wait_more(true, STEP),
            "60 s beside others: give back"
        );
    }

    #[test]
    fn pressure_after_a_long_wait_for_others_is_a_new_short_hold() {
        let mut clock = HoldClock::default();
        assert!(ticks(&mut clock, true, 20));
        // The reader stopped; its pressure lingers.
        assert!(ticks(&mut clock, false, 2));
        assert!(ticks(&mut clock, false, 7));
    }

    #[test]
    fn a_hold_that_keeps_changing_kind_still_ends() {
        let mut clock = HoldClock::default();
        let mut steps = 0;
        while clock.wait_more(steps % 4 < 2, STEP) {
            steps += 1;
            assert!(steps < 1000, "never ends");
        }
        assert_eq!(Duration::from_millis(500) * steps, YIELD_WAIT);
    }
}
