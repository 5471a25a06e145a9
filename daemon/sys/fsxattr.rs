//! FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR: a file's extended flags (the
//! `xflags` that `xfs_io -c lsattr` and `chattr` show: realtime, immutable,
//! append-only, no-defrag, DAX...), its extent size hint and its project.
//! XFS introduced them; ext4, btrfs and f2fs answer the same ioctls.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::{Error, Result};

/// `struct fsxattr` (linux/fs.h), 28 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawFsxattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

// _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr).
nix::ioctl_read_bad!(fs_ioc_fsgetxattr, 0x801C_581F, RawFsxattr);
nix::ioctl_write_ptr_bad!(fs_ioc_fssetxattr, 0x401C_5820, RawFsxattr);

bitflags::bitflags! {
    /// The extended flags (`FS_XFLAG_*`) of a file.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct XFlags: u32 {
        const REALTIME = 0x0000_0001;
        const PREALLOC = 0x0000_0002;
        const IMMUTABLE = 0x0000_0008;
        const APPEND = 0x0000_0010;
        const NODEFRAG = 0x0000_2000;
        const EXTSIZE = 0x0000_0800;
        const DAX = 0x0000_8000;
        const COWEXTSIZE = 0x0001_0000;
        // The others are kept as they are: FSSETXATTR writes them back.
        const _ = !0;
    }
}

impl XFlags {
    /// The data lives on the realtime device.
    pub const fn realtime(self) -> bool {
        self.contains(Self::REALTIME)
    }
    pub const fn immutable(self) -> bool {
        self.contains(Self::IMMUTABLE)
    }
    pub const fn append_only(self) -> bool {
        self.contains(Self::APPEND)
    }
    /// `chattr +f` / `xfs_io -c 'chattr +f'`: the owner asked defragmenters
    /// (xfs_fsr, and so defragd) to leave the file alone.
    pub const fn no_defrag(self) -> bool {
        self.contains(Self::NODEFRAG)
    }
    /// The file asks for DAX (direct access to persistent memory).
    pub const fn dax(self) -> bool {
        self.contains(Self::DAX)
    }
    /// The file has its own extent size hint.
    pub const fn extent_size_hint(self) -> bool {
        self.contains(Self::EXTSIZE)
    }
}

/// What FS_IOC_FSGETXATTR says of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fsxattr {
    pub xflags: XFlags,
    /// The extent size hint in bytes (0: none).
    pub extsize: u32,
    /// Data extents, as the filesystem counts them.
    pub nextents: u32,
    pub projid: u32,
    /// The copy-on-write extent size hint in bytes (0: none).
    pub cowextsize: u32,
}

impl From<RawFsxattr> for Fsxattr {
    fn from(raw: RawFsxattr) -> Self {
        Fsxattr {
            xflags: XFlags::from_bits_retain(raw.fsx_xflags),
            extsize: raw.fsx_extsize,
            nextents: raw.fsx_nextents,
            projid: raw.fsx_projid,
            cowextsize: raw.fsx_cowextsize,
        }
    }
}

/// The extended attributes of the file `fd` refers to.
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> Result<Fsxattr> {
    let mut raw = RawFsxattr::default();
    // SAFETY: `raw` is a valid struct fsxattr the kernel fills in.
    unsafe { fs_ioc_fsgetxattr(fd.as_raw_fd(), &mut raw) }
        .map_err(|errno| Error::of("FS_IOC_FSGETXATTR", errno))?;
    Ok(raw.into())
}

/// Sets the flags, extent size hint and project of `fd` (the count of
/// extents is the kernel's and ignored). An extent size hint can only be
/// set on a file that has no extents yet.
pub fn set_fsxattr(fd: BorrowedFd<'_>, attr: &Fsxattr) -> Result<()> {
    let raw = RawFsxattr {
        fsx_xflags: attr.xflags.bits(),
        fsx_extsize: attr.extsize,
        fsx_nextents: 0,
        fsx_projid: attr.projid,
        fsx_cowextsize: attr.cowextsize,
        fsx_pad: [0; 8],
    };
    // SAFETY: `raw` is a valid struct fsxattr the kernel only reads.
    unsafe { fs_ioc_fssetxattr(fd.as_raw_fd(), &raw) }
        .map_err(|errno| Error::of("FS_IOC_FSSETXATTR", errno))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_linux_fs_h() {
        assert_eq!(std::mem::size_of::<RawFsxattr>(), 28);
        assert_eq!(std::mem::offset_of!(RawFsxattr, fsx_extsize), 4);
        assert_eq!(std::mem::offset_of!(RawFsxattr, fsx_nextents), 8);
        assert_eq!(std::mem::offset_of!(RawFsxattr, fsx_projid), 12);
        assert_eq!(std::mem::offset_of!(RawFsxattr, fsx_cowextsize), 16);
    }

    #[test]
    fn ioctl_numbers_encode_the_struct_size() {
        // _IOC(dir, 'X', nr, 28): dir 2 = read, 1 = write.
        let encode = |dir: u32, nr: u32| (dir << 30) | (28 << 16) | (u32::from(b'X') << 8) | nr;
        assert_eq!(encode(2, 31), 0x801C_581F);
        assert_eq!(encode(1, 32), 0x401C_5820);
    }

    #[test]
    fn flags_decode() {
        let f = XFlags::NODEFRAG | XFlags::REALTIME;
        assert!(f.no_defrag() && f.realtime());
        assert!(!f.immutable() && !f.append_only() && !f.dax() && !f.extent_size_hint());
        let g = XFlags::IMMUTABLE | XFlags::APPEND | XFlags::DAX;
        assert!(g.immutable() && g.append_only() && g.dax() && !g.no_defrag());
    }
}
