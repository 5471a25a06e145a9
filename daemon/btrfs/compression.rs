//! How a file's data is compressed on btrfs: the algorithm a file's
//! property (the `btrfs.compression` xattr, set by `btrfs property set` or
//! `chattr +c`) or its mount (`compress=`, `compress-force=`) asks for.
//! FIEMAP only says that an extent is compressed (ENCODED), not how.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::sys::error::{Error, Result};

/// A btrfs compression algorithm, with the code the defrag ioctl takes
/// (BTRFS_COMPRESS_* in the kernel's compression.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressType {
    Zlib,
    Lzo,
    Zstd,
}

impl CompressType {
    /// The code `compress_type` of DEFRAG_RANGE takes.
    pub const fn code(self) -> u32 {
        match self {
            CompressType::Zlib => 1,
            CompressType::Lzo => 2,
            CompressType::Zstd => 3,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CompressType::Zlib => "zlib",
            CompressType::Lzo => "lzo",
            CompressType::Zstd => "zstd",
        }
    }

    /// Parses a property or mount option value: `zstd`, `zstd:3`, `zlib:9`,
    /// `lzo`. None for "no", "none", "" and anything unknown.
    pub fn parse(value: &str) -> Option<CompressType> {
        let name = value.split(':').next().unwrap_or("").trim();
        match name {
            "zlib" => Some(CompressType::Zlib),
            "lzo" => Some(CompressType::Lzo),
            "zstd" => Some(CompressType::Zstd),
            _ => None,
        }
    }
}

impl std::fmt::Display for CompressType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const PROPERTY: &CStr = c"btrfs.compression";

/// The file's `btrfs.compression` property; None when it has none (or it
/// says "no"/"none").
pub fn compression_property(fd: BorrowedFd<'_>) -> Result<Option<CompressType>> {
    let mut value = [0u8; 64];
    // SAFETY: the name is NUL-terminated and `value` is writable for the
    // length passed; the fd is open for the call's length.
    let rc = unsafe {
        nix::libc::fgetxattr(
            fd.as_raw_fd(),
            PROPERTY.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    match Errno::result(rc) {
        Ok(len) => {
            let len = usize::try_from(len).unwrap_or(0).min(value.len());
            let text = String::from_utf8_lossy(&value[..len]);
            Ok(CompressType::parse(text.trim_end_matches('\0')))
        }
        Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => Ok(None),
        Err(errno) => Err(Error::of("fgetxattr(btrfs.compression)", errno)),
    }
}

/// The algorithm the mount `fd` was opened through compresses new writes
/// with (`compress=` or `compress-force=` in /proc/self/mountinfo's
/// superblock options); None when it does not compress or the mount
/// cannot be read. The mount is found by its id (statx STATX_MNT_ID), not
/// by st_dev: on btrfs every subvolume has an anonymous device number of
/// its own, never the one mountinfo lists for the mount.
pub fn mount_compression(fd: BorrowedFd<'_>) -> Result<Option<CompressType>> {
    let mount_id = mount_id(fd)?;
    let Some(mounts) = crate::sys::mounts() else {
        return Ok(None);
    };
    Ok(mounts
        .into_iter()
        .find(|m| u64::try_from(m.mnt_id).ok() == Some(mount_id))
        .and_then(|mount| {
            ["compress-force", "compress"]
                .iter()
                .find_map(|key| mount.super_options.get(*key).cloned().flatten())
        })
        .and_then(|value| CompressType::parse(&value)))
}

/// statx(2)'s mount id of an open file (Linux 5.8+).
fn mount_id(fd: BorrowedFd<'_>) -> Result<u64> {
    // SAFETY: all-zero is a valid struct statx.
    let mut stx: nix::libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty NUL-terminated string, used with
    // AT_EMPTY_PATH on an open fd; `stx` is writable for the kernel.
    let rc = unsafe {
        nix::libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            nix::libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    Errno::result(rc).map_err(|errno| Error::of("statx", errno))?;
    if stx.stx_mask & nix::libc::STATX_MNT_ID == 0 {
        return Err(Error::of("statx(STATX_MNT_ID)", Errno::EOPNOTSUPP));
    }
    Ok(stx.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_levels_parse_and_none_is_none() {
        assert_eq!(CompressType::parse("zstd:3"), Some(CompressType::Zstd));
        assert_eq!(CompressType::parse("zlib"), Some(CompressType::Zlib));
        assert_eq!(CompressType::parse("lzo"), Some(CompressType::Lzo));
        assert_eq!(CompressType::parse("no"), None);
        assert_eq!(CompressType::parse("none"), None);
        assert_eq!(CompressType::parse(""), None);
        assert_eq!(CompressType::Zstd.code(), 3);
    }
}
