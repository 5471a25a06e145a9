//! The medium under a filesystem (a rotational disk or flash), which sets
//! what one extent boundary costs a reader. The kernel's rotational flag
//! is only a hint (virtual disks often say rotational whatever is under
//! them), so the operator's word in the config wins over it. Deciding is
//! pure; the only side effect here is reading the flag from sysfs.

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
    /// Follow the kernel's rotational flag.
    #[default]
    Auto,
    Is(Medium),
}

impl MediumChoice {
    /// The words the config takes.
    pub const WORDS: [&'static str; 3] = ["auto", "ssd", "hdd"];

    pub fn parse(word: &str) -> Option<MediumChoice> {
        match word {
            "auto" => Some(MediumChoice::Auto),
            "ssd" => Some(MediumChoice::Is(Medium::Ssd)),
            "hdd" => Some(MediumChoice::Is(Medium::Hdd)),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediumChoice::Auto => "auto",
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
}

impl MediumSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MediumSource::Config => "config",
            MediumSource::Rotational => "sysfs",
            MediumSource::Assumed => "assumed",
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
        }
    }
}

/// The config's word first, then the kernel's flag (`Some(true)`:
/// rotational), then a disk.
pub fn decide(choice: MediumChoice, rotational: Option<bool>) -> MediumDecided {
    match (choice, rotational) {
        (MediumChoice::Is(medium), _) => MediumDecided {
            medium,
            source: MediumSource::Config,
        },
        (MediumChoice::Auto, Some(rotational)) => MediumDecided {
            medium: if rotational { Medium::Hdd } else { Medium::Ssd },
            source: MediumSource::Rotational,
        },
        (MediumChoice::Auto, None) => MediumDecided {
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

    #[test]
    fn the_config_overrides_the_flag() {
        for flag in [Some(true), Some(false), None] {
            let d = decide(MediumChoice::Is(Medium::Ssd), flag);
            assert_eq!((d.medium, d.source), (Medium::Ssd, MediumSource::Config));
            let d = decide(MediumChoice::Is(Medium::Hdd), flag);
            assert_eq!((d.medium, d.source), (Medium::Hdd, MediumSource::Config));
        }
    }

    #[test]
    fn auto_follows_the_flag_and_assumes_a_disk_without_one() {
        let d = decide(MediumChoice::Auto, Some(false));
        assert_eq!(
            (d.medium, d.source),
            (Medium::Ssd, MediumSource::Rotational)
        );
        let d = decide(MediumChoice::Auto, Some(true));
        assert_eq!(
            (d.medium, d.source),
            (Medium::Hdd, MediumSource::Rotational)
        );
        let d = decide(MediumChoice::Auto, None);
        assert_eq!((d.medium, d.source), (Medium::Hdd, MediumSource::Assumed));
        assert_eq!(d.to_string(), "hdd (assumed: no rotational flag)");
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
