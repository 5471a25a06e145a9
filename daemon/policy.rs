//! Is a file worth moving, and how urgently? Pure decisions over an
//! assessment and the policy settings; every decision carries its reason so
//! it can be logged and recorded.

use std::path::Path;
use std::time::Duration;

use crate::assess::Assessment;

/// The thresholds a file must pass to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub min_size_bytes: u64,
    pub min_excess_extents: u64,
    pub min_score: f64,
    pub quiet_period: Duration,
}

/// What to do with a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Queue it with this priority (higher first).
    Queue { priority: f64 },
    /// Leave it, for this reason.
    Leave(LeaveReason),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaveReason {
    #[error("excluded by the policy's exclude patterns")]
    Excluded,
    #[error("smaller than policy.min_size ({size} bytes)")]
    TooSmall { size: u64 },
    #[error("only {excess} extents over ideal (policy.min_excess_extents is {min})")]
    FewExcessExtents { excess: u64, min: u64 },
    #[error("score {score:.1} is below policy.min_score {min:.1}")]
    LowScore { score: f64, min: f64 },
}

/// Decides whether `assessment` of the file at `path` is worth a move.
pub fn decide(
    path: &Path,
    assessment: &Assessment,
    thresholds: &Thresholds,
    is_excluded: impl Fn(&Path) -> bool,
) -> Decision {
    if is_excluded(path) {
        return Decision::Leave(LeaveReason::Excluded);
    }
    if assessment.size_bytes < thresholds.min_size_bytes {
        return Decision::Leave(LeaveReason::TooSmall {
            size: assessment.size_bytes,
        });
    }
    let excess = assessment.excess_extents();
    if excess < thresholds.min_excess_extents.max(1) || assessment.is_contiguous() {
        return Decision::Leave(LeaveReason::FewExcessExtents {
            excess,
            min: thresholds.min_excess_extents,
        });
    }
    if assessment.score < thresholds.min_score {
        return Decision::Leave(LeaveReason::LowScore {
            score: assessment.score,
            min: thresholds.min_score,
        });
    }
    Decision::Queue {
        priority: priority(assessment, Heat::Cold),
    }
}

/// How recently a file was written: recently written files are read soon
/// again, so their layout matters more.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Heat {
    Cold,
    /// Seen written by the watcher.
    Hot,
}

/// Gain: excess extents, weighted by the data they cover (log-scaled, so a
/// huge file does not starve all others) and by write heat.
pub fn priority(assessment: &Assessment, heat: Heat) -> f64 {
    let excess = assessment.excess_extents() as f64;
    let mib = assessment.size_bytes as f64 / f64::from(1u32 << 20);
    let weight = 1.0 + (1.0 + mib).log2();
    let heat = match heat {
        Heat::Cold => 1.0,
        Heat::Hot => 2.0,
    };
    excess * weight * heat
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assessment(size_bytes: u64, extents: u64, ideal: u64) -> Assessment {
        Assessment {
            size_bytes,
            extents,
            fiemap_entries: extents,
            physical_runs: extents,
            ideal_extents: ideal,
            data_ranges: ideal,
            blocks: size_bytes / 4096,
            score: crate::assess::score(extents, ideal),
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            min_size_bytes: 1 << 20,
            min_excess_extents: 4,
            min_score: 10.0,
            quiet_period: Duration::from_secs(30),
        }
    }

    const NONE: fn(&Path) -> bool = |_| false;

    #[test]
    fn fragmented_files_are_queued() {
        let d = decide(
            Path::new("/srv/a"),
            &assessment(100 << 20, 400, 1),
            &thresholds(),
            NONE,
        );
        assert!(matches!(d, Decision::Queue { priority } if priority > 0.0));
    }

    #[test]
    fn each_threshold_leaves_files_with_its_reason() {
        let t = thresholds();
        let p = Path::new("/srv/a");
        assert_eq!(
            decide(p, &assessment(100 << 20, 400, 1), &t, |_| true),
            Decision::Leave(LeaveReason::Excluded)
        );
        assert!(matches!(
            decide(p, &assessment(4096, 400, 1), &t, NONE),
            Decision::Leave(LeaveReason::TooSmall { .. })
        ));
        assert!(matches!(
            decide(p, &assessment(100 << 20, 3, 1), &t, NONE),
            Decision::Leave(LeaveReason::FewExcessExtents { excess: 2, .. })
        ));
        // 105 extents where 100 would do: score 4.8 < 10.
        assert!(matches!(
            decide(p, &assessment(100 << 30, 105, 100), &t, NONE),
            Decision::Leave(LeaveReason::LowScore { .. })
        ));
    }

    #[test]
    fn bigger_and_hotter_files_come_first() {
        let small = priority(&assessment(1 << 20, 100, 1), Heat::Cold);
        let big = priority(&assessment(1 << 30, 100, 1), Heat::Cold);
        let hot = priority(&assessment(1 << 20, 100, 1), Heat::Hot);
        assert!(big > small && hot > small);
        let messier = priority(&assessment(1 << 20, 1000, 1), Heat::Cold);
        assert!(messier > small);
    }
}
