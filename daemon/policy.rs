//! Is a file worth moving, and how urgently? Pure decisions over an
//! assessment and the policy settings; every decision carries its reason so
//! it can be logged and recorded.

use std::path::Path;
use std::time::Duration;

use crate::assess::Assessment;
use crate::medium::Medium;

/// The thresholds a file must pass to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub min_size_bytes: u64,
    pub min_excess_extents: u64,
    pub min_score: f64,
    pub quiet_period: Duration,
    pub benefit: Benefit,
}

/// The benefit model: what a move saves a reader (the excess extent
/// boundaries, each costing `boundary_ms` on this medium) against what it
/// writes (the whole file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Benefit {
    pub medium: Medium,
    /// What one extent boundary costs a full read of the file, in ms: a
    /// seek on a disk, one more (split) request on flash.
    pub boundary_ms: f64,
    /// A move must save at least this much read time per GiB it writes.
    pub min_saved_ms_per_gib: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

/// What the fragmentation of a file costs one full read of it, in ms.
pub fn read_cost_ms(assessment: &Assessment, boundary_ms: f64) -> f64 {
    excess_read_cost_ms(assessment.excess_extents(), boundary_ms)
}

/// What `excess` extents cost one full read, in ms.
pub fn excess_read_cost_ms(excess: u64, boundary_ms: f64) -> f64 {
    excess as f64 * boundary_ms
}

/// Read time a move of the file saves, per GiB the move writes.
pub fn saved_ms_per_gib(assessment: &Assessment, boundary_ms: f64) -> f64 {
    if assessment.size_bytes == 0 {
        return 0.0;
    }
    read_cost_ms(assessment, boundary_ms) * GIB / assessment.size_bytes as f64
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
    #[error(
        "not worth its writes on {medium}: a move would save {saved:.1} ms of read time \
         per GiB written (policy.min_saved_ms_per_gib is {min})"
    )]
    NoBenefit {
        medium: Medium,
        saved: f64,
        min: f64,
    },
}

impl LeaveReason {
    /// A stable code for scripts and the history.
    pub fn code(&self) -> &'static str {
        match self {
            LeaveReason::Excluded => "excluded",
            LeaveReason::TooSmall { .. } => "too_small",
            LeaveReason::FewExcessExtents { .. } => "few_excess_extents",
            LeaveReason::LowScore { .. } => "low_score",
            LeaveReason::NoBenefit { .. } => "no_benefit_on_medium",
        }
    }
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
    let b = &thresholds.benefit;
    let saved = saved_ms_per_gib(assessment, b.boundary_ms);
    if saved < b.min_saved_ms_per_gib {
        return Decision::Leave(LeaveReason::NoBenefit {
            medium: b.medium,
            saved,
            min: b.min_saved_ms_per_gib,
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
        thresholds_on(Medium::Hdd)
    }

    /// The defaults of etc/defragd.toml.
    fn thresholds_on(medium: Medium) -> Thresholds {
        let policy = crate::config::PolicySettings::default();
        Thresholds {
            min_size_bytes: 1 << 20,
            min_excess_extents: 4,
            min_score: 10.0,
            quiet_period: Duration::from_secs(30),
            benefit: policy.benefit(medium),
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn on_flash_large_pieces_are_left_and_small_pieces_moved() {
        let p = Path::new("/srv/a");
        let ssd = thresholds_on(Medium::Ssd);
        // Dozens of 8 MiB pieces: 24 × 8 MiB, ideally 2 extents of 128 MiB.
        let large = assessment(192 * MIB, 24, 2);
        match decide(p, &large, &ssd, NONE) {
            Decision::Leave(reason @ LeaveReason::NoBenefit { medium, saved, .. }) => {
                assert_eq!(medium, Medium::Ssd);
                // 22 boundaries × 0.1 ms over 0.1875 GiB.
                assert!((saved - 11.73).abs() < 0.01, "saved {saved}");
                assert_eq!(reason.code(), "no_benefit_on_medium");
            }
            other => panic!("8 MiB pieces on flash: {other:?}"),
        }
        // Thousands of 64 KiB pieces: 2000 × 64 KiB.
        let small = assessment(125 * MIB, 2000, 1);
        assert!(matches!(
            decide(p, &small, &ssd, NONE),
            Decision::Queue { .. }
        ));
    }

    #[test]
    fn on_a_disk_both_are_moved() {
        let p = Path::new("/srv/a");
        let hdd = thresholds_on(Medium::Hdd);
        for a in [assessment(192 * MIB, 24, 2), assessment(125 * MIB, 2000, 1)] {
            assert!(
                matches!(decide(p, &a, &hdd, NONE), Decision::Queue { .. }),
                "{a:?}"
            );
        }
    }

    #[test]
    fn the_benefit_is_boundaries_times_their_cost_per_gib_written() {
        // 1 GiB in 1001 extents, ideally 8: 993 boundaries too many.
        let a = assessment(1 << 30, 1001, 8);
        assert!((read_cost_ms(&a, 8.0) - 7944.0).abs() < 1e-9);
        assert!((saved_ms_per_gib(&a, 0.1) - 99.3).abs() < 1e-9);
        // Half the size, the same boundaries: twice the saving per GiB.
        let half = assessment(1 << 29, 1001, 8);
        assert!((saved_ms_per_gib(&half, 0.1) - 198.6).abs() < 1e-9);
        assert_eq!(saved_ms_per_gib(&assessment(0, 0, 0), 8.0), 0.0);
        // The threshold is inclusive: exactly enough pays.
        let mut t = thresholds_on(Medium::Ssd);
        t.benefit.min_saved_ms_per_gib = saved_ms_per_gib(&half, 0.1);
        assert!(matches!(
            decide(Path::new("/a"), &half, &t, NONE),
            Decision::Queue { .. }
        ));
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
