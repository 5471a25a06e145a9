//! The daily write budget: how many bytes moves may write to one device in
//! one local day, so that flash is not worn for defragmentation's sake.
//! Pure arithmetic over an injected day (the unix time of its local
//! midnight) and clock; the service keeps the ledgers and asks here.

use std::collections::HashMap;

use crate::mounts::DiskId;

/// Bytes moved on each device today.
#[derive(Debug, Clone, Default)]
pub struct Ledgers {
    /// By disk: the day counted (its local midnight) and the bytes moved.
    by_disk: HashMap<DiskId, (i64, u64)>,
}

impl Ledgers {
    /// Counts `bytes` moved on `disk` on the day starting at `today`; a new
    /// day starts from zero.
    pub fn spend(&mut self, disk: &DiskId, bytes: u64, today: i64) {
        let entry = self.by_disk.entry(disk.clone()).or_insert((today, 0));
        if entry.0 != today {
            *entry = (today, 0);
        }
        entry.1 = entry.1.saturating_add(bytes);
    }

    /// Bytes moved on `disk` on the day starting at `today`.
    pub fn spent(&self, disk: &DiskId, today: i64) -> u64 {
        match self.by_disk.get(disk) {
            Some(&(day, bytes)) if day == today => bytes,
            _ => 0,
        }
    }

    /// Whether `disk` has a count for the day starting at `today` (after a
    /// start, the first count is taken from the history).
    pub fn knows(&self, disk: &DiskId, today: i64) -> bool {
        self.by_disk.get(disk).is_some_and(|&(day, _)| day == today)
    }
}

/// Where a device stands against its budget today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No budget on this device.
    Unlimited,
    /// This much may still be moved today.
    Left(u64),
    /// Spent: moves wait until `until` (unix time, the next local midnight).
    Spent { until: i64 },
}

/// `disk`'s standing with `limit` bytes a day (`None`: unlimited), having
/// moved `spent` today; the next day starts at `next_day`.
pub fn standing(limit: Option<u64>, spent: u64, next_day: i64) -> Standing {
    match limit {
        None => Standing::Unlimited,
        Some(limit) if spent < limit => Standing::Left(limit - spent),
        Some(_) => Standing::Spent { until: next_day },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const MIB: u64 = 1 << 20;

    #[test]
    fn a_day_counts_until_the_next_and_then_starts_from_zero() {
        let disk = DiskId("8:0".into());
        let other = DiskId("8:16".into());
        let today = 1_700_000_000 - 1_700_000_000 % DAY;
        let mut ledgers = Ledgers::default();
        assert!(!ledgers.knows(&disk, today));
        ledgers.spend(&disk, 3 * MIB, today);
        ledgers.spend(&disk, 2 * MIB, today);
        ledgers.spend(&other, MIB, today);
        assert!(ledgers.knows(&disk, today));
        assert_eq!(ledgers.spent(&disk, today), 5 * MIB);
        assert_eq!(ledgers.spent(&other, today), MIB, "each device its own");
        // The next day: nothing spent yet, and spending starts from zero.
        assert_eq!(ledgers.spent(&disk, today + DAY), 0);
        assert!(!ledgers.knows(&disk, today + DAY));
        ledgers.spend(&disk, MIB, today + DAY);
        assert_eq!(ledgers.spent(&disk, today + DAY), MIB);
        assert_eq!(ledgers.spent(&disk, today), 0, "yesterday is gone");
    }

    #[test]
    fn a_spent_budget_waits_for_the_next_day() {
        let next = 1_700_006_400;
        assert_eq!(standing(None, u64::MAX, next), Standing::Unlimited);
        assert_eq!(
            standing(Some(10 * MIB), 4 * MIB, next),
            Standing::Left(6 * MIB)
        );
        assert_eq!(
            standing(Some(10 * MIB), 10 * MIB, next),
            Standing::Spent { until: next }
        );
        // A chunk may overshoot by its own size; still spent, never negative.
        assert_eq!(
            standing(Some(10 * MIB), 11 * MIB, next),
            Standing::Spent { until: next }
        );
    }

    #[test]
    fn spending_saturates() {
        let disk = DiskId("8:0".into());
        let mut ledgers = Ledgers::default();
        ledgers.spend(&disk, u64::MAX, 0);
        ledgers.spend(&disk, 1, 0);
        assert_eq!(ledgers.spent(&disk, 0), u64::MAX);
    }
}
