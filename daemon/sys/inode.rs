//! Per-inode facts every filesystem answers through the generic FS_IOC
//! ioctls: the generation (half of a file's identity) and the inode flags
//! (`chattr`'s) that decide whether a file can be moved.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc::c_long;

use super::error::{Error, Result};

// _IOR('v', 1, long) and _IOR('f', 1, long). The kernel writes an int into
// the long-sized buffer, so it is zeroed first and read as 32 bits.
nix::ioctl_read_bad!(fs_ioc_getversion, 0x8008_7601, c_long);
nix::ioctl_read_bad!(fs_ioc_getflags, 0x8008_6601, c_long);

/// i_generation: changes when an inode number is reused for a new file.
pub fn generation(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut value: c_long = 0;
    // SAFETY: `value` is a valid, writable long for the kernel to fill.
    unsafe { fs_ioc_getversion(fd.as_raw_fd(), &mut value) }
        .map_err(|errno| Error::of("FS_IOC_GETVERSION", errno))?;
    Ok(value as u32)
}

/// The inode flags of an open file (what `lsattr` shows).
pub fn inode_flags(fd: BorrowedFd<'_>) -> Result<InodeFlags> {
    let mut value: c_long = 0;
    // SAFETY: `value` is a valid, writable long for the kernel to fill.
    unsafe { fs_ioc_getflags(fd.as_raw_fd(), &mut value) }
        .map_err(|errno| Error::of("FS_IOC_GETFLAGS", errno))?;
    Ok(InodeFlags(value as u32))
}

/// FS_*_FL inode flags, decoded for what matters to moving a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InodeFlags(pub u32);

impl InodeFlags {
    pub const IMMUTABLE: u32 = 0x0000_0010;
    pub const APPEND: u32 = 0x0000_0020;
    pub const ENCRYPT: u32 = 0x0000_0800;
    pub const JOURNAL_DATA: u32 = 0x0000_4000;
    pub const EXTENTS: u32 = 0x0008_0000;
    pub const VERITY: u32 = 0x0010_0000;
    pub const DAX: u32 = 0x0200_0000;
    pub const INLINE_DATA: u32 = 0x1000_0000;

    const fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
    pub const fn immutable(self) -> bool {
        self.has(Self::IMMUTABLE)
    }
    pub const fn append_only(self) -> bool {
        self.has(Self::APPEND)
    }
    pub const fn encrypted(self) -> bool {
        self.has(Self::ENCRYPT)
    }
    pub const fn journal_data(self) -> bool {
        self.has(Self::JOURNAL_DATA)
    }
    pub const fn extent_mapped(self) -> bool {
        self.has(Self::EXTENTS)
    }
    pub const fn verity(self) -> bool {
        self.has(Self::VERITY)
    }
    pub const fn dax(self) -> bool {
        self.has(Self::DAX)
    }
    pub const fn inline_data(self) -> bool {
        self.has(Self::INLINE_DATA)
    }
}
