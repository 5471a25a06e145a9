//! Where a filesystem is mounted and with which options, from
//! /proc/self/mountinfo: what every backend's probe starts from.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use super::FsError;
use crate::sys;

/// The mount of the filesystem a file lives on.
#[derive(Debug, Clone)]
pub struct Mount {
    /// st_dev of files on it.
    pub dev: u64,
    pub mount_point: PathBuf,
    /// The mount source: its device, by a name that may be stale.
    pub source: Option<String>,
    pub read_only: bool,
    pub dax: bool,
    /// The filesystem's own options (mountinfo's super options), which
    /// its backend reads for what only it has.
    pub super_options: HashMap<String, Option<String>>,
}

impl Mount {
    /// Whether the super options hold `key`, with `value` if one is given.
    pub fn has_option(&self, key: &str, value: Option<&str>) -> bool {
        has(&self.super_options, key, value)
    }
}

fn has(options: &HashMap<String, Option<String>>, key: &str, value: Option<&str>) -> bool {
    options
        .get(key)
        .is_some_and(|v| value.is_none() || v.as_deref() == value)
}

/// "major:minor" of a device, as mountinfo and /sys name it.
pub fn majmin(dev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    )
}

/// The mount of the filesystem `fd` lives on.
///
/// Found by device (mountinfo's major:minor against st_dev) where that
/// names the filesystem: the first mount of the device is the one its
/// superblock options show, and bind mounts of it share them. btrfs is
/// the exception: a file's st_dev is its subvolume's anonymous device,
/// which mountinfo never shows (it shows the filesystem's), and two
/// mounts of one btrfs may be two different subvolumes. There the mount
/// `fd` was opened through is found by its id (statx STATX_MNT_ID).
pub fn find_mount(fd: BorrowedFd<'_>) -> Result<Mount, FsError> {
    let dev = sys::stat(fd)?.st_dev;
    let wanted = majmin(dev);
    let not_found = || FsError::MountNotFound(wanted.clone());
    let mounts = sys::mounts().ok_or_else(not_found)?;
    let by_device = mounts
        .iter()
        .find(|m| m.majmin == wanted && m.fs_type != "btrfs");
    let mount = match by_device {
        Some(mount) => mount,
        None => {
            let id = sys::mount_id(fd)?;
            mounts
                .iter()
                .find(|m| u64::try_from(m.mnt_id).ok() == Some(id))
                .ok_or_else(not_found)?
        }
    };
    let supers = &mount.super_options;
    Ok(Mount {
        dev,
        read_only: has(&mount.mount_options, "ro", None) || has(supers, "ro", None),
        dax: has(supers, "dax", None)
            || has(supers, "dax", Some("always"))
            || has(supers, "dax", Some("inode")),
        mount_point: mount.mount_point.clone(),
        source: mount.mount_source.clone(),
        super_options: mount.super_options.clone(),
    })
}
