//! The inode flags (FS_IOC_GETFLAGS) that decide how btrfs rewrites a
//! file: nodatacow (chattr +C), compress (+c) and no-compress (+m), and
//! the immutable and append-only flags every filesystem has.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc::c_long;

use crate::sys::error::{Error, Result};

// _IOR('f', 1, long); btrfs writes an int into it, so it is zeroed first
// and read as 32 bits.
nix::ioctl_read_bad!(fs_ioc_getflags, 0x8008_6601, c_long);

/// The inode flags of an open file on btrfs (what `lsattr` shows).
pub fn inode_flags(fd: BorrowedFd<'_>) -> Result<InodeFlags> {
    let mut value: c_long = 0;
    // SAFETY: `value` is a valid, writable long for the kernel to fill.
    unsafe { fs_ioc_getflags(fd.as_raw_fd(), &mut value) }
        .map_err(|errno| Error::of("FS_IOC_GETFLAGS", errno))?;
    Ok(InodeFlags(value as u32))
}

/// FS_*_FL flags, decoded for what matters to rewriting a file on btrfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InodeFlags(pub u32);

impl InodeFlags {
    pub const COMPRESS: u32 = 0x0000_0004;
    pub const IMMUTABLE: u32 = 0x0000_0010;
    pub const APPEND: u32 = 0x0000_0020;
    pub const NOCOMPRESS: u32 = 0x0000_0400;
    pub const VERITY: u32 = 0x0010_0000;
    pub const NOCOW: u32 = 0x0080_0000;

    const fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
    /// nodatacow: written in place, without checksums.
    pub const fn nocow(self) -> bool {
        self.has(Self::NOCOW)
    }
    pub const fn compress(self) -> bool {
        self.has(Self::COMPRESS)
    }
    pub const fn no_compress(self) -> bool {
        self.has(Self::NOCOMPRESS)
    }
    pub const fn immutable(self) -> bool {
        self.has(Self::IMMUTABLE)
    }
    pub const fn append_only(self) -> bool {
        self.has(Self::APPEND)
    }
    pub const fn verity(self) -> bool {
        self.has(Self::VERITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_values_of_linux_fs_h() {
        assert!(InodeFlags(0x0080_0000).nocow());
        assert!(InodeFlags(0x4).compress() && !InodeFlags(0x4).no_compress());
        assert!(InodeFlags(0x400).no_compress());
        assert_eq!(
            nix::request_code_read!(b'f', 1, std::mem::size_of::<c_long>()),
            0x8008_6601
        );
    }
}
