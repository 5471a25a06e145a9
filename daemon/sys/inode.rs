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
    Ok(InodeFlags::from_bits_retain(value as u32))
}

bitflags::bitflags! {
    /// FS_*_FL inode flags, decoded for what matters to moving a file: on
    /// every filesystem, and on btrfs (nodatacow, compression) how it may
    /// be rewritten.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct InodeFlags: u32 {
        const COMPRESS = 0x0000_0004;
        const IMMUTABLE = 0x0000_0010;
        const APPEND = 0x0000_0020;
        const NOCOMPRESS = 0x0000_0400;
        const ENCRYPT = 0x0000_0800;
        const JOURNAL_DATA = 0x0000_4000;
        const EXTENTS = 0x0008_0000;
        const VERITY = 0x0010_0000;
        const NOCOW = 0x0080_0000;
        const DAX = 0x0200_0000;
        const INLINE_DATA = 0x1000_0000;
        const _ = !0;
    }
}

impl InodeFlags {
    pub const fn immutable(self) -> bool {
        self.contains(Self::IMMUTABLE)
    }
    pub const fn append_only(self) -> bool {
        self.contains(Self::APPEND)
    }
    pub const fn encrypted(self) -> bool {
        self.contains(Self::ENCRYPT)
    }
    pub const fn journal_data(self) -> bool {
        self.contains(Self::JOURNAL_DATA)
    }
    pub const fn extent_mapped(self) -> bool {
        self.contains(Self::EXTENTS)
    }
    pub const fn verity(self) -> bool {
        self.contains(Self::VERITY)
    }
    pub const fn dax(self) -> bool {
        self.contains(Self::DAX)
    }
    pub const fn inline_data(self) -> bool {
        self.contains(Self::INLINE_DATA)
    }
    /// btrfs' nodatacow (chattr +C): written in place, without checksums.
    pub const fn nocow(self) -> bool {
        self.contains(Self::NOCOW)
    }
    /// btrfs' compress (chattr +c).
    pub const fn compress(self) -> bool {
        self.contains(Self::COMPRESS)
    }
    /// btrfs' no-compress (chattr +m).
    pub const fn no_compress(self) -> bool {
        self.contains(Self::NOCOMPRESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_requests_have_the_values_of_linux_fs_h() {
        let flags = InodeFlags::from_bits_retain;
        assert!(flags(0x0080_0000).nocow());
        assert!(flags(0x4).compress() && !flags(0x4).no_compress());
        assert!(flags(0x400).no_compress());
        assert!(flags(0x10).immutable() && flags(0x20).append_only());
        let long = std::mem::size_of::<c_long>();
        assert_eq!(nix::request_code_read!(b'f', 1, long), 0x8008_6601);
        assert_eq!(nix::request_code_read!(b'v', 1, long), 0x8008_7601);
    }
}
