//! The medium of each covered filesystem, decided once per configuration
//! and set of filesystems (the config's `[[filesystem]] medium`, else the
//! kernel's rotational flag of its disk) and remembered until either
//! changes.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Settings;
use crate::filesystem::FsUuid;
use crate::medium::{self, MediumChoice, MediumDecided};
use crate::mounts::Covered;

use super::shared::lock;

/// What the config says of the filesystem mounted at `fs`'s mount point.
pub fn choice_for(settings: &Settings, fs: &Covered) -> MediumChoice {
    settings
        .filesystems
        .iter()
        .find(|entry| entry.path == fs.mount_point)
        .map_or(MediumChoice::Auto, |entry| entry.medium)
}

/// The media decided so far, by filesystem uuid.
#[derive(Default)]
pub struct Media(Mutex<HashMap<FsUuid, MediumDecided>>);

impl Media {
    /// `fs`'s medium, deciding it the first time it is asked for.
    pub fn of(&self, settings: &Settings, fs: &Covered) -> MediumDecided {
        *lock(&self.0).entry(fs.uuid).or_insert_with(|| {
            medium::decide(choice_for(settings, fs), medium::rotational_flag(&fs.disk))
        })
    }

    /// Decides again at the next question (a reload, filesystems changed).
    pub fn forget(&self) {
        lock(&self.0).clear();
    }
}
