//! btrfs' own kernel interface, behind safe, typed wrappers: the kernel's
//! defragmenter (BTRFS_IOC_DEFRAG_RANGE), the filesystem's facts
//! (BTRFS_IOC_FS_INFO, free space as btrfs counts it), the subvolume a
//! file lives in (BTRFS_IOC_GET_SUBVOL_INFO) and the compression
//! property. Calls every filesystem shares live in [`crate::sys`], the
//! inode flags (nodatacow, compress) among them. Every errno is mapped
//! to a [`crate::sys::Error`]; nothing above sees one. This module decides
//! nothing: the btrfs backend (`crate::backend::btrfs`) does.

mod compression;
mod defrag;
mod filesystem;
mod subvolume;

pub use compression::{compression_property, mount_compression, CompressType};
pub use defrag::{defrag_range, Defrag};
pub use filesystem::{commit_transaction, fs_info, BtrfsInfo};
pub use subvolume::{subvolume, Subvolume};

/// btrfs' statfs magic number (BTRFS_SUPER_MAGIC).
pub const MAGIC: i64 = 0x9123_683E;
