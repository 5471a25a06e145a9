//! Which filesystems the service covers: the configured mount points, or
//! every eligible one; what makes one eligible (mounted read-write, of a
//! type a backend serves, and what that backend asks of it: for ext4 not
//! bigalloc, DAX or data=journal); and which disk each lives on, so that
//! one disk never sees two moves at once.

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
    pub uuid: FsUuid,
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
    Ok(Covered {
        uuid: info.uuid,
        backend,
        mount_point: mount_point.to_path_buf(),
        dev: stat.st_dev,
        disk: disk_of(stat.st_dev),
        info,
    })
}

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
/// per device (the first mount of each).
pub fn supported_mount_points() -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    sys::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| Backend::for_fs_type(&m.fs_type).is_some())
        .filter(|m| !m.mount_options.contains_key("ro") && m.root == "/")
        .filter(|m| seen.insert(m.majmin.clone()))
        .map(|m| m.mount_point)
        .collect()
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
