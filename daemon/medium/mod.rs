//! The medium under a filesystem (a rotational disk or flash), which sets
//! what one extent boundary costs a reader. The kernel's rotational flag
//! is only a hint (virtual disks often say rotational whatever is under
//! them), so by default the service measures the device ([`probe`]) and
//! follows the flag only until it has, or where it cannot; the operator's
//! word in the config wins over both. Deciding is pure; the side effects
//! here are reading the flag from sysfs and the probe's reads.

pub mod probe;
pub mod quiet;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mounts::DiskId;

/// What a filesystem's device is, as far as fragmentation is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Medium {
    /// A spinning disk: every extent boundary costs a seek.
    #[default]
    Hdd,
    /// Flash: a boundary costs at most one more, smaller request.
    Ssd,
}

impl Medium {
    /// The stable word shown to scripts and written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Hdd => "hdd",
            Medium::Ssd => "ssd",
        }
    }
}

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[filesystem]] medium`: what the operator says of a filesystem's device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediumChoice {
    /// Measure the device; the kernel's rotational flag until then.
    #[default]
    Auto,
    /// Follow the kernel's rotational flag, without measuring.
    Sysfs,
    Is(Medium),
}

impl MediumChoice {
    /// The words the config takes.
    pub const WORDS: [&'static str; 4] = ["auto", "sysfs", "ssd", "hdd"];

    pub fn parse(word: &str) -> Option<MediumChoice> {
        match word {
            "auto" => Some(MediumChoice::Auto),
            "sysfs" => Some(MediumChoice::Sysfs),
            "ssd" => Some(MediumChoice::Is(Medium::Ssd)),
            "hdd" => Some(MediumChoice::Is(Medium::Hdd)),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediumChoice::Auto => "auto",
            MediumChoice::Sysfs => "sysfs",
            MediumChoice::Is(medium) => medium.as_str(),
        }
    }
}

/// Where the decision came from, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediumSource {
    /// `[[filesystem]] medium` in the config.
    Config,
    /// The kernel's rotational flag.
    Rotational,
    /// Nothing said: taken as a disk, which moves what fragmentation
    /// costs a seek for (the behaviour before media were told apart).
    Assumed,
    /// Measured by reading a file there ([`probe`]): one extent boundary
    /// costs this many microseconds; and what the flag said.
    Measured {
        boundary_us: u32,
        rotational: Option<bool>,
    },
}

impl MediumSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MediumSource::Config => "config",
            MediumSource::Rotational => "sysfs",
            MediumSource::Assumed => "assumed",
            MediumSource::Measured { .. } => "measured",
        }
    }
}

/// The medium decided for one filesystem, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumDecided {
    pub medium: Medium,
    pub source: MediumSource,
}

impl fmt::Display for MediumDecided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            MediumSource::Config => write!(f, "{} (set in the config)", self.medium),
            MediumSource::Rotational => write!(f, "{} (sysfs rotational flag)", self.medium),
            MediumSource::Assumed => write!(f, "{} (assumed: no rotational flag)", self.medium),
            MediumSource::Measured {
                boundary_us,
                rotational,
            } => {
                write!(
                    f,
                    "{} (measured: one extent boundary costs {:.2} ms",
                    self.medium,
                    f64::from(boundary_us) / 1e3
                )?;
                match rotational {
                    Some(true) if self.medium == Medium::Ssd => {
                        f.write_str("; the rotational flag says hdd)")
                    }
                    Some(false) if self.medium == Medium::Hdd => {
                        f.write_str("; the rotational flag says ssd)")
                    }
                    _ => f.write_str(")"),
                }
            }
        }
    }
}

impl MediumDecided {
    /// What one extent boundary was measured to cost, in ms; None where
    /// the medium was not measured.
    pub fn measured_boundary_ms(&self) -> Option<f64> {
        match self.source {
            MediumSource::Measured { boundary_us, .. } => Some(f64::from(boundary_us) / 1e3),
            _ => None,
        }
    }
}

/// The config's word first, then a measurement (only where the choice is
/// `auto`), then the kernel's flag (`Some(true)`: rotational), then a disk.
pub fn decide(
    choice: MediumChoice,
    rotational: Option<bool>,
    measured: Option<probe::Probe>,
) -> MediumDecided {
    match (choice, measured, rotational) {
        (MediumChoice::Is(medium), _, _) => MediumDecided {
            medium,
            source: MediumSource::Config,
        },
        (MediumChoice::Auto, Some(probe), rotational) => MediumDecided {
            medium: probe.medium(),
            source: MediumSource::Measured {
                // Whole microseconds: a cost of over an hour is no cost anyone measured.
                boundary_us: (probe.boundary_ms() * 1e3).round().min(f64::from(u32::MAX)) as u32,
                rotational,
            },
        },
        (_, _, Some(rotational)) => MediumDecided {
            medium: if rotational { Medium::Hdd } else { Medium::Ssd },
            source: MediumSource::Rotational,
        },
        (_, _, None) => MediumDecided {
            medium: Medium::Hdd,
            source: MediumSource::Assumed,
        },
    }
}

/// The contents of a `queue/rotational` file: "1" or "0" and a newline.
pub fn parse_rotational(text: &str) -> Option<bool> {
    match text.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The kernel's rotational flag for `disk` (a whole disk's "major:minor",
/// as `mounts::disk_of` gives); None where sysfs does not say.
pub fn rotational_flag(disk: &DiskId) -> Option<bool> {
    let path = format!("/sys/dev/block/{}/queue/rotational", disk.0);
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| parse_rotational(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLASH: probe::Probe = probe::Probe {
        jump_ms: 0.16,
        adjacent_ms: 0.11,
    };
    const DISK: probe::Probe = probe::Probe {
        jump_ms: 8.4,
        adjacent_ms: 0.3,
    };

    #[test]
    fn the_config_overrides_the_flag_and_the_measurement() {
        for flag in [Some(true), Some(false), None] {
            for measured in [Some(FLASH), Some(DISK), None] {
                let d = decide(MediumChoice::Is(Medium::Ssd), flag, measured);
                assert_eq!((d.medium, d.source), (Medium::Ssd, MediumSource::Config));
                let d = decide(MediumChoice::Is(Medium::Hdd), flag, measured);
                assert_eq!((d.medium, d.source), (Medium::Hdd, MediumSource::Config));
            }
        }
    }

    #[test]
    fn auto_follows_the_flag_and_assumes_a_disk_without_one() {
        for choice in [MediumChoice::Auto, MediumChoice::Sysfs] {
            let d = decide(choice, Some(false), None);
            assert_eq!(
                (d.medium, d.source),
                (Medium::Ssd, MediumSource::Rotational)
            );
            let d = decide(choice, Some(true), None);
            assert_eq!(
                (d.medium, d.source),
                (Medium::Hdd, MediumSource::Rotational)
            );
            let d = decide(choice, None, None);
            assert_eq!((d.medium, d.source), (Medium::Hdd, MediumSource::Assumed));
            assert_eq!(d.to_string(), "hdd (assumed: no rotational flag)");
        }
    }

    #[test]
    fn a_measurement_overrides_the_flag_unless_the_config_says_sysfs() {
        // A virtual disk flagged rotational over flash.
        let d = decide(MediumChoice::Auto, Some(true), Some(FLASH));
        assert_eq!(
            (d.medium, d.source),
            (
                Medium::Ssd,
                MediumSource::Measured {
                    boundary_us: 50,
                    rotational: Some(true)
                }
            )
        );
        assert_eq!(
            d.to_string(),
            "ssd (measured: one extent boundary costs 0.05 ms; the rotational flag says hdd)"
        );
        let d = decide(MediumChoice::Auto, Some(false), Some(DISK));
        assert_eq!(d.medium, Medium::Hdd);
        assert_eq!(d.source.as_str(), "measured");
        let d = decide(MediumChoice::Auto, Some(true), Some(DISK));
        assert_eq!(
            d.to_string(),
            "hdd (measured: one extent boundary costs 8.10 ms)"
        );
        let d = decide(MediumChoice::Sysfs, Some(true), Some(FLASH));
        assert_eq!(
            (d.medium, d.source),
            (Medium::Hdd, MediumSource::Rotational)
        );
    }

    #[test]
    fn rotational_text_and_config_words_parse() {
        assert_eq!(parse_rotational("0\n"), Some(false));
        assert_eq!(parse_rotational("1\n"), Some(true));
        assert_eq!(parse_rotational(""), None);
        assert_eq!(parse_rotational("2"), None);
        for word in MediumChoice::WORDS {
            assert_eq!(
                MediumChoice::parse(word).map(MediumChoice::as_str),
                Some(word)
            );
        }
        assert_eq!(MediumChoice::parse("SSD"), None);
        assert_eq!(MediumChoice::parse("nvme"), None);
    }
}
