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
    /// The inode and generation the file must have (a queued job's).
    pub expected_identity: Option<(u64, u32)>,
}
