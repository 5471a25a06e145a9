//! Which filesystems the service covers: the configured mount points, or
//! every eligible one; what makes one eligible (mounted read-write, of a
//! type a backend serves, and what that backend asks of it: for ext4 not
//! bigalloc, DAX or data=journal); and which disk each lives on, so that
//! one disk never sees two moves at once.
//!
//! btrfs: each mounted subvolume is covered on its own, once however many
//! times it is mounted. Inode numbers, st_dev and statfs' f_fsid are all
//! per subvolume there, and a crawl never leaves its subvolume (st_dev
//! changes at a nested one, as at a mount). A subvolume is named by its own
//! UUID (`btrfs subvolume show`), the top level (subvolid=5) by the
//! filesystem's; several subvolumes of one filesystem share its disk, so
//! their moves are still one at a time. A nested subvolume that is not
//! mounted anywhere is not covered: mount it (or name its mount point).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::backend::{self, Backend};
use crate::filesystem::{FsError, FsInfo, FsUuid};
use crate::outcome::SkipReason;
use crate::sys;

/// A block device that moves are serialised on (a partition's disk).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskId(pub String);

/// A covered filesystem.
#[derive(Debug, Clone)]
pub struct Covered {
    /// What the service names it by: the filesystem's UUID, or on btrfs
    /// the covered subvolume's own (the top level's is the filesystem's).
    pub uuid: FsUuid,
    /// The btrfs subvolume it is (5 for the top level); 0 elsewhere.
    pub subvolume: u64,
    /// The backend that moves files on it.
    pub backend: Backend,
    pub mount_point: PathBuf,
    pub dev: u64,
    pub disk: DiskId,
    pub info: FsInfo,
}

/// A mount point that is not covered, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {why}", .path.display())]
pub struct Ineligible {
    pub path: PathBuf,
    pub why: Why,
}

/// Why a mount point is not covered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Why {
    #[error("cannot open it: {0}")]
    Open(sys::Error),
    #[error("not a mount point (name the filesystem's mount point)")]
    NotMountPoint,
    #[error("{0}")]
    Probe(FsError),
    #[error("mounted read-only")]
    ReadOnly,
    #[error("a bigalloc filesystem; the kernel cannot move extents there")]
    Bigalloc,
    #[error("mounted with DAX; the kernel cannot move extents there")]
    Dax,
    #[error("mounted with data=journal; the kernel cannot move extents there")]
    DataJournal,
    #[error("a read-only btrfs subvolume (a snapshot); nothing in it can be rewritten")]
    ReadOnlySubvolume,
    /// A backend's reason that none above names.
    #[error("the filesystem {0}")]
    Refused(SkipReason),
}

impl From<SkipReason> for Why {
    fn from(reason: SkipReason) -> Self {
        match reason {
            SkipReason::ReadOnly => Why::ReadOnly,
            SkipReason::Bigalloc => Why::Bigalloc,
            SkipReason::Dax => Why::Dax,
            SkipReason::DataJournal => Why::DataJournal,
            SkipReason::ReadOnlySubvolume => Why::ReadOnlySubvolume,
            other => Why::Refused(other),
        }
    }
}

/// Opens and checks the filesystem mounted at `mount_point`.
pub fn cover(mount_point: &Path) -> Result<Covered, Ineligible> {
    let refuse = |why| Ineligible {
        path: mount_point.to_path_buf(),
        why,
    };
    let root = open_root(mount_point)?;
    let stat = sys::stat(root.as_fd()).map_err(|e| refuse(Why::Open(e)))?;
    let mount_root = sys::is_mount_root(root.as_fd()).map_err(|e| refuse(Why::Open(e)))?;
    if !mount_root {
        return Err(refuse(Why::NotMountPoint));
    }
    let (backend, info) = backend::probe(root.as_fd()).map_err(|e| refuse(Why::Probe(e)))?;
    backend
        .refuse_filesystem(&info)
        .map_err(|reason| refuse(Why::from(reason)))?;
    let unit = unit_of(backend, &info, &root).map_err(refuse)?;
    Ok(Covered {
        uuid: unit.uuid,
        subvolume: unit.subvolume,
        backend,
        mount_point: mount_point.to_path_buf(),
        dev: stat.st_dev,
        disk: unit.disk.unwrap_or_else(|| disk_of(stat.st_dev)),
        info,
    })
}

/// What names a covered filesystem (or btrfs subvolume), and its disk
/// where st_dev does not name it.
struct Unit {
    uuid: FsUuid,
    subvolume: u64,
    disk: Option<DiskId>,
}

/// The unit mounted at `root`: the filesystem, or on btrfs the subvolume
/// (refused when read-only). A btrfs file's st_dev is its subvolume's
/// anonymous device, which no disk is: its disk is the mount source's.
fn unit_of(backend: Backend, info: &FsInfo, root: &OwnedFd) -> Result<Unit, Why> {
    let readable = sys::reopen(root.as_fd(), sys::Access::ReadOnly).map_err(Why::Open)?;
    let Some(subvolume) = backend.subvolume(readable.as_fd()).map_err(Why::Open)? else {
        return Ok(Unit {
            uuid: info.uuid,
            subvolume: 0,
            disk: None,
        });
    };
    if subvolume.read_only {
        return Err(Why::ReadOnlySubvolume);
    }
    let uuid = if subvolume.id == TOP_LEVEL_SUBVOLUME {
        info.uuid
    } else {
        FsUuid(subvolume.uuid)
    };
    let disk = Some(disk_of_fs(info));
    Ok(Unit {
        uuid,
        subvolume: subvolume.id,
        disk,
    })
}

/// btrfs' top-level subvolume (BTRFS_FS_TREE_OBJECTID).
pub const TOP_LEVEL_SUBVOLUME: u64 = 5;

/// Opens a covered filesystem's root, checking it is still the same
/// filesystem there (it may have been unmounted, leaving the bare
/// directory underneath).
pub fn open_root(mount_point: &Path) -> Result<OwnedFd, Ineligible> {
    sys::open_dir(mount_point).map_err(|e| Ineligible {
        path: mount_point.to_path_buf(),
        why: Why::Open(e),
    })
}

/// Opens `covered`'s root if it is still mounted where it was.
pub fn reopen_root(covered: &Covered) -> Option<OwnedFd> {
    let root = open_root(&covered.mount_point).ok()?;
    let stat = sys::stat(root.as_fd()).ok()?;
    let mount_root = sys::is_mount_root(root.as_fd()).ok()?;
    (stat.st_dev == covered.dev && mount_root).then_some(root)
}

/// Mount points of filesystems a backend serves, mounted read-write, one
/// per device (the first mount of each); on btrfs one per subvolume (the
/// first mount of each).
pub fn supported_mount_points() -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    sys::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| Backend::for_fs_type(&m.fs_type).is_some())
        .filter(|m| !m.mount_options.contains_key("ro") && mounts_whole(m))
        .filter(|m| seen.insert((m.majmin.clone(), m.root.clone())))
        .map(|m| m.mount_point)
        .collect()
}

/// Whether `m` mounts a whole filesystem, or on btrfs a whole subvolume
/// (its root is the subvolume's: `subvol=` names it), not a directory
/// within one (a bind mount).
fn mounts_whole(m: &procfs_core::process::MountInfo) -> bool {
    let subvol = m.super_options.get("subvol").and_then(|v| v.as_deref());
    is_whole(&m.fs_type, &m.root, subvol)
}

fn is_whole(fs_type: &str, root: &str, subvol: Option<&str>) -> bool {
    root == "/" || (fs_type == "btrfs" && subvol == Some(root))
}

/// The disk the filesystem `info` describes lives on: its st_dev's, or
/// where st_dev is no block device (btrfs gives each subvolume an
/// anonymous one) its mount source's.
pub fn disk_of_fs(info: &FsInfo) -> DiskId {
    let sysfs =
        |dev: u64| PathBuf::from(format!("/sys/dev/block/{}", crate::filesystem::majmin(dev)));
    if sysfs(info.dev).exists() {
        return disk_of(info.dev);
    }
    nix::sys::stat::stat(&info.device)
        .ok()
        .filter(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFBLK)
        .map_or_else(|| disk_of(info.dev), |st| disk_of(st.st_rdev))
}

/// The disk a device lives on: the parent of a partition, else itself.
pub fn disk_of(dev: u64) -> DiskId {
    let id = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let sys = PathBuf::from(format!("/sys/dev/block/{id}"));
    if sys.join("partition").exists() {
        if let Ok(parent) = std::fs::read_to_string(sys.join("../dev")) {
            return DiskId(parent.trim().to_string());
        }
    }
    DiskId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_filesystems_and_whole_btrfs_subvolumes_are_discovered_not_bind_mounts() {
        assert!(is_whole("ext4", "/", None));
        assert!(
            !is_whole("ext4", "/srv", None),
            "a bind mount of a directory"
        );
        assert!(is_whole("btrfs", "/", Some("/")));
        assert!(is_whole("btrfs", "/@home", Some("/@home")));
        assert!(!is_whole("btrfs", "/@home/alice", Some("/@home")));
        assert!(!is_whole("btrfs", "/@home", None));
    }
}
