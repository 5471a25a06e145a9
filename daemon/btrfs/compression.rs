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

/// The algorithm the mount of device `dev` (st_dev) compresses new writes
/// with (`compress=` or `compress-force=` in /proc/self/mountinfo's
/// superblock options); None when it does not compress or the mount
/// cannot be read.
pub fn mount_compression(dev: u64) -> Option<CompressType> {
    let wanted = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let mount = crate::sys::mounts()?
        .into_iter()
        .find(|m| m.majmin == wanted)?;
    ["compress-force", "compress"]
        .iter()
        .find_map(|key| mount.super_options.get(*key).cloned().flatten())
        .and_then(|value| CompressType::parse(&value))
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
