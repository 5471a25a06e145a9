//! The file a job is about: a name in an open directory. Plain data shared
//! by the walk, the queue, the mover and the backends; what `inspect`
//! finds when it opens it is [`crate::backend::Inspected`].

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// A file to work on: a name in an open directory. The path is for people.
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    pub path: PathBuf,
    /// The device the file must be on (the tree's), when known.
    pub expected_dev: Option<u64>,
    /// Who the file must be (a queued job's).
    pub expected_identity: Option<FileKey>,
}

/// A file within its filesystem, for its whole life: on btrfs an inode
/// number is unique only within its subvolume, and a number is reused
/// with a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The btrfs subvolume; 0 on filesystems without them.
    pub subvolume: u64,
    pub ino: u64,
    pub generation: u32,
}
