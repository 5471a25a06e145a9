//! The subvolume a file lives in (BTRFS_IOC_GET_SUBVOL_INFO, which any
//! file of the subvolume answers, since Linux 4.18): its id, which with
//! the filesystem id, inode number and generation names a file (an inode
//! number is unique only within a subvolume), and whether it is
//! read-only (a read-only snapshot, or `btrfs property set ro true`).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

// _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args)
nix::ioctl_read_bad!(btrfs_ioc_get_subvol_info, 0x81F8_943C, GetSubvolInfoArgs);

/// BTRFS_ROOT_SUBVOL_RDONLY in the root item's flags.
const ROOT_SUBVOL_RDONLY: u64 = 1;

/// The subvolume a file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subvolume {
    /// The subvolume id (tree id): 5 for the top level.
    pub id: u64,
    pub read_only: bool,
    pub uuid: [u8; 16],
    /// The uuid of the subvolume this one is a snapshot of; None for one
    /// that is not a snapshot.
    pub parent_uuid: Option<[u8; 16]>,
}

/// The subvolume the open file `fd` lives in.
pub fn subvolume(fd: BorrowedFd<'_>) -> Result<Subvolume> {
    // SAFETY: the struct is plain integers and bytes; all-zero is valid.
    let mut args: Box<GetSubvolInfoArgs> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `args` is a valid, writable btrfs_ioctl_get_subvol_info_args
    // for the kernel to fill; the fd is open for the call's length.
    unsafe { btrfs_ioc_get_subvol_info(fd.as_raw_fd(), &mut *args) }
        .map_err(|errno| Error::of("BTRFS_IOC_GET_SUBVOL_INFO", errno))?;
    Ok(Subvolume {
        id: args.treeid,
        read_only: args.flags & ROOT_SUBVOL_RDONLY != 0,
        uuid: args.uuid,
        parent_uuid: (args.parent_uuid != [0; 16]).then_some(args.parent_uuid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_size_and_request_match_the_kernel_abi() {
        // btrfs_ioctl_timespec is 16 bytes with its padding, as in C.
        assert_eq!(std::mem::size_of::<Timespec>(), 16);
        assert_eq!(std::mem::size_of::<GetSubvolInfoArgs>(), 504);
        assert_eq!(
            nix::request_code_read!(0x94, 60, std::mem::size_of::<GetSubvolInfoArgs>()),
            0x81F8_943C
        );
    }
}
