//! What defragd knows of a filesystem, whatever its type: the facts every
//! layer above the backend seam reads (`FsInfo`), its UUID, why one cannot
//! be worked on at all, and where it is mounted. Each backend's probe
//! fills an `FsInfo`; what only one type has (ext4's superblock and where
//! it was read from) is kept in `FsDetail`, which only that backend reads.
//! This module issues no ioctl and decides nothing about files.

mod mount;
mod uuid;

pub use mount::{find_mount, majmin, Mount};
pub use uuid::{BadUuid, FsUuid};

use std::path::PathBuf;

use crate::backend::Backend;

/// Everything decided once per filesystem.
#[derive(Debug, Clone)]
pub struct FsInfo {
    /// st_dev of files on it.
    pub dev: u64,
    pub mount_point: PathBuf,
    /// Its block device (the mount source, where it cannot be resolved).
    pub device: PathBuf,
    pub block_size: u64,
    pub uuid: FsUuid,
    pub read_only: bool,
    pub dax: bool,
    /// The longest extent this filesystem records, in blocks: what the
    /// ideal extent count of a file is counted in. Per filesystem, not per
    /// type (XFS's depends on its allocation group size).
    pub max_extent_blocks: u64,
    /// What only its type has.
    pub detail: FsDetail,
}

/// The facts of a filesystem only its own backend reads.
#[derive(Debug, Clone)]
pub enum FsDetail {
    Ext4(crate::ext4::Ext4Detail),
    Xfs(crate::xfs::Geometry),
    Btrfs(crate::backend::btrfs::BtrfsDetail),
}

impl FsDetail {
    /// ext4's facts, when it is ext4.
    pub fn ext4(&self) -> Option<&crate::ext4::Ext4Detail> {
        match self {
            FsDetail::Ext4(detail) => Some(detail),
            FsDetail::Xfs(_) | FsDetail::Btrfs(_) => None,
        }
    }
}

impl FsInfo {
    /// What an operator should hear, once per filesystem, when some of its
    /// facts could not be read from its device and were learnt otherwise:
    /// what could not be read and what that changes. None when they were.
    pub fn layout_note(&self) -> Option<String> {
        match &self.detail {
            FsDetail::Ext4(detail) => detail.layout_note(&self.mount_point),
            // XFS's geometry comes from an ioctl: nothing is guessed.
            FsDetail::Xfs(_) | FsDetail::Btrfs(_) => None,
        }
    }

    /// Whether its layout came from the kernel rather than its device
    /// (see `layout_note`).
    pub fn layout_from_kernel(&self) -> bool {
        match &self.detail {
            FsDetail::Ext4(detail) => detail.layout_from_kernel(),
            FsDetail::Xfs(_) | FsDetail::Btrfs(_) => false,
        }
    }

    /// The blocks of the largest region its allocator hands out as one
    /// (ext4's flex group, or block group without flex_bg; XFS's
    /// allocation group): e4defrag's best extent count is one per region a
    /// file spans.
    pub fn group_blocks(&self) -> u64 {
        match &self.detail {
            FsDetail::Ext4(detail) => detail.group_blocks(),
            FsDetail::Xfs(geometry) => u64::from(geometry.ag_blocks),
            // btrfs allocates from chunks of 1 GiB (data) and has no
            // region a file must be split at: its longest extent is the
            // limit.
            FsDetail::Btrfs(_) => self.max_extent_blocks,
        }
    }

    /// Whether a file's data can live in its inode (no block, and FIEMAP
    /// shows one extent).
    pub fn inline_data(&self) -> bool {
        match &self.detail {
            FsDetail::Ext4(detail) => detail.superblock.inline_data,
            FsDetail::Xfs(_) => false,
            // Inline extents exist on btrfs (max_inline), and FIEMAP
            // shows them as one extent.
            FsDetail::Btrfs(_) => true,
        }
    }
}

/// Why a filesystem cannot be worked on at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error(
        "{} filesystem (statfs type {magic:#x}), which defragd does not support: it works on {}",
        type_name(*.magic),
        supported_types()
    )]
    Unsupported { magic: i64 },
    #[error("the mount for device {0} is not in /proc/self/mountinfo: is /proc mounted?")]
    MountNotFound(String),
    #[error(transparent)]
    Call(#[from] crate::sys::Error),
}

/// The filesystem types defragd works on, for a message: "ext4", or
/// "ext4, xfs and btrfs".
pub fn supported_types() -> String {
    let names: Vec<&str> = Backend::ALL.iter().map(|b| b.fs_type()).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A filesystem type's name from its statfs magic number, for a message.
pub fn type_name(magic: i64) -> String {
    match magic {
        0x0102_1994 => "a tmpfs".into(),
        0x5846_5342 => "an xfs".into(),
        0x9123_683E => "a btrfs".into(),
        0x6969 => "an nfs".into(),
        0x794C_7630 => "an overlayfs".into(),
        other => format!("a type {other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_names_the_type_and_what_is_supported() {
        let message = FsError::Unsupported { magic: 0x0102_1994 }.to_string();
        assert!(message.starts_with("a tmpfs filesystem"), "{message}");
        assert!(message.ends_with(&supported_types()), "{message}");
        assert!(supported_types().contains("ext4"));
    }
}
