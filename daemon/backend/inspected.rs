//! A file as `inspect` found it when it opened and measured it: what the
//! mover and every backend decide from.

use std::os::fd::OwnedFd;

use super::Backend;
use crate::assess::{Assessment, ExtentMap};
use crate::filesystem::FsInfo;
use crate::sys::{Extent, InodeFlags};

/// A file opened read-only and measured.
#[derive(Debug)]
pub struct Inspected {
    /// The O_PATH pin: reopening it gives exactly this inode.
    pub pinned: OwnedFd,
    pub file: OwnedFd,
    /// The backend that moves files on its filesystem.
    pub backend: Backend,
    pub fs: FsInfo,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Last data change, seconds since the epoch.
    pub mtime: i64,
    pub generation: u32,
    /// The btrfs subvolume it lives in; 0 on filesystems without them.
    pub subvolume: u64,
    pub flags: InodeFlags,
    pub map: ExtentMap,
    /// The FIEMAP rows `map` was made from, with their flags (btrfs'
    /// selection reads which are shared): as the file was when inspected.
    pub extents: Vec<Extent>,
    pub assessment: Assessment,
}
