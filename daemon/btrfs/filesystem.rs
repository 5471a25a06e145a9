//! Facts about a btrfs filesystem: its id and sizes (BTRFS_IOC_FS_INFO),
//! its free space as btrfs itself counts it, and a commit of its running
//! transaction (BTRFS_IOC_SYNC).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::error::{Error, Result};

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

// _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
nix::ioctl_read_bad!(btrfs_ioc_fs_info, 0x8400_941F, FsInfoArgs);
// _IO(0x94, 8)
nix::ioctl_none_bad!(btrfs_ioc_sync, 0x9408);

/// What BTRFS_IOC_FS_INFO tells of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtrfsInfo {
    /// The filesystem's id (what `btrfs filesystem show` calls its uuid):
    /// with the subvolume, inode number and generation, it names a file.
    pub fsid: [u8; 16],
    /// The data block size: what extents and defrag ranges are counted in.
    pub sectorsize: u32,
    /// The metadata block size.
    pub nodesize: u32,
    pub num_devices: u64,
}

/// BTRFS_IOC_FS_INFO of the filesystem `fd` lives on (any file on it).
pub fn fs_info(fd: BorrowedFd<'_>) -> Result<BtrfsInfo> {
    // SAFETY: FsInfoArgs is plain integers and bytes; all-zero is valid
    // (flags 0: ask for nothing beyond the basic fields).
    let mut args: Box<FsInfoArgs> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `args` is a valid, writable btrfs_ioctl_fs_info_args for the
    // kernel to fill; the fd is open for the call's length.
    unsafe { btrfs_ioc_fs_info(fd.as_raw_fd(), &mut *args) }
        .map_err(|errno| Error::of("BTRFS_IOC_FS_INFO", errno))?;
    Ok(BtrfsInfo {
        fsid: args.fsid,
        sectorsize: args.sectorsize,
        nodesize: args.nodesize,
        num_devices: args.num_devices,
    })
}

/// Commits the running transaction (BTRFS_IOC_SYNC: delayed writes
/// flushed, then a commit), which also frees the extents that rewrites
/// replaced: until a commit, they stay pinned and count as used.
pub fn commit_transaction(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: the ioctl takes no argument; the fd is open for the call.
    unsafe { btrfs_ioc_sync(fd.as_raw_fd()) }
        .map(drop)
        .map_err(|errno| Error::of("BTRFS_IOC_SYNC", errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_size_and_requests_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(
            nix::request_code_read!(0x94, 31, std::mem::size_of::<FsInfoArgs>()),
            0x8400_941F
        );
        assert_eq!(nix::request_code_none!(0x94, 8), 0x9408);
    }
}
