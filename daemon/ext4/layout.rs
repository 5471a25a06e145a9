//! A filesystem's layout learnt from the kernel, for when its block device
//! cannot be read (containers and sandboxed VMs refuse even root): the
//! block size from statfs, the UUID and the feature flags from ext4's own
//! ioctls, the flex group size from GETFSMAP. What no call tells (the
//! blocks per group, and whatever an older kernel lacks) is taken as mkfs
//! sets it and named, so the caller can say once what is a guess.
//! This module reads; it decides nothing.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::statfs::Statfs;

use super::filesystem::Superblock;
use crate::filesystem::FsUuid;
use crate::sys::fsmap;

/// `s_feature_incompat` and `s_feature_ro_compat` bits that matter here.
pub(super) const INCOMPAT_EXTENTS: u32 = 0x0040;
pub(super) const INCOMPAT_FLEX_BG: u32 = 0x0200;
pub(super) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(super) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(super) const RO_COMPAT_BIGALLOC: u32 = 0x0200;

/// What mkfs.ext4 gives a filesystem unless told otherwise: 16 groups per
/// flex group.
const MKFS_GROUPS_PER_FLEX: u32 = 16;

/// A fact of the layout that no call could tell, taken as mkfs sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess {
    /// Blocks per group: 8 × the block size (one bitmap block's worth).
    BlocksPerGroup,
    /// Groups per flex group: 16.
    GroupsPerFlex,
    /// The feature flags (kernels before 6.17 do not report them): an
    /// extent-mapped filesystem with flex_bg; each file's own flags still
    /// decide what is done to it.
    Features,
    /// The UUID (kernels before 6.2): derived from statfs's f_fsid, which
    /// ext4 folds from the UUID, so it is still the same for every mount.
    Uuid,
}

impl Guess {
    pub fn describe(self) -> &'static str {
        match self {
            Guess::BlocksPerGroup => "blocks per group (taken as 8 × the block size)",
            Guess::GroupsPerFlex => "groups per flex group (taken as 16)",
            Guess::Features => "feature flags (taken as extents and flex_bg)",
            Guess::Uuid => "UUID (derived from statfs's f_fsid)",
        }
    }
}

/// The layout as the kernel tells it, and what had to be guessed.
pub(super) fn from_kernel(fd: BorrowedFd<'_>, statfs: &Statfs) -> (Superblock, Vec<Guess>) {
    let mut guessed = vec![Guess::BlocksPerGroup];
    let block_size = u32::try_from(statfs.block_size()).unwrap_or(4096).max(1024);
    let uuid = ext4_uuid(fd).unwrap_or_else(|| {
        guessed.push(Guess::Uuid);
        uuid_from_fsid(statfs)
    });
    let (incompat, ro_compat) = features(fd).unwrap_or_else(|| {
        guessed.push(Guess::Features);
        (INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG, 0)
    });
    let flex_bg = incompat & INCOMPAT_FLEX_BG != 0;
    let groups_per_flex = flex_bg.then(|| {
        first_flex_group_size(fd, block_size).unwrap_or_else(|| {
            guessed.push(Guess::GroupsPerFlex);
            MKFS_GROUPS_PER_FLEX
        })
    });
    guessed.sort_by_key(|g| *g as u8);
    let superblock = Superblock {
        uuid,
        block_size,
        blocks_per_group: block_size.saturating_mul(8),
        groups_per_flex,
        has_extents: incompat & INCOMPAT_EXTENTS != 0,
        bigalloc: ro_compat & RO_COMPAT_BIGALLOC != 0,
        inline_data: incompat & INCOMPAT_INLINE_DATA != 0,
        encryption: incompat & INCOMPAT_ENCRYPT != 0,
    };
    (superblock, guessed)
}

#[repr(C)]
struct FsUuidArg {
    len: u32,
    flags: u32,
    uuid: [u8; 16],
}

// EXT4_IOC_GETFSUUID: _IOR('f', 44, struct fsuuid), whose declared size
// is the 8-byte header; the UUID follows it.
nix::ioctl_read_bad!(ext4_ioc_getfsuuid, 0x8008_662C, FsUuidArg);

/// The UUID from EXT4_IOC_GETFSUUID (Linux 6.2 and later).
fn ext4_uuid(fd: BorrowedFd<'_>) -> Option<FsUuid> {
    let mut arg = FsUuidArg {
        len: 16,
        flags: 0,
        uuid: [0; 16],
    };
    // SAFETY: `arg` is the header the kernel reads followed by the 16
    // bytes `len` tells it it may write.
    unsafe { ext4_ioc_getfsuuid(fd.as_raw_fd(), &mut arg) }.ok()?;
    (arg.len == 16 && arg.uuid != [0; 16]).then_some(FsUuid(arg.uuid))
}

/// A stand-in UUID from f_fsid: ext4 folds its UUID into these 8 bytes,
/// so they stay the same across mounts and reboots.
fn uuid_from_fsid(statfs: &Statfs) -> FsUuid {
    // SAFETY: fsid_t is two plain ints (8 bytes, no padding); nix keeps its
    // fields private, so its bytes are read whole.
    let fsid: [u8; 8] = unsafe { std::mem::transmute(statfs.filesystem_id()) };
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&fsid);
    FsUuid(uuid)
}

/// `struct ext4_tune_sb_params`: 232 bytes on every architecture; only
/// the feature words are read.
#[repr(C)]
struct TuneSbParams {
    head: [u8; 64],
    feature_compat: u32,
    feature_incompat: u32,
    feature_ro_compat: u32,
    rest: [u8; 156],
}

// EXT4_IOC_GET_TUNE_SB_PARAM: _IOR('f', 45, struct ext4_tune_sb_params).
nix::ioctl_read_bad!(ext4_ioc_get_tune_sb_param, 0x80E8_662D, TuneSbParams);

/// (incompat, ro_compat) feature flags from EXT4_IOC_GET_TUNE_SB_PARAM
/// (Linux 6.17 and later).
fn features(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut params = TuneSbParams {
        head: [0; 64],
        feature_compat: 0,
        feature_incompat: 0,
        feature_ro_compat: 0,
        rest: [0; 156],
    };
    // SAFETY: `params` is a writable buffer of the size the request encodes.
    unsafe { ext4_ioc_get_tune_sb_param(fd.as_raw_fd(), &mut params) }.ok()?;
    Some((params.feature_incompat, params.feature_ro_compat))
}

/// The size of the first flex group: with flex_bg, mkfs packs the block
/// bitmaps of a flex group's groups together at its start, so the first
/// run of block bitmaps is one block per group. (On a filesystem smaller
/// than one flex group that is its group count, which gives the same
/// figures for any file on it.)
fn first_flex_group_size(fd: BorrowedFd<'_>, block_size: u32) -> Option<u32> {
    let blocks = fsmap::first_block_bitmap_run(fd).ok()?? / u64::from(block_size);
    u32::try_from(blocks).ok().filter(|n| n.is_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_arguments_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<TuneSbParams>(), 232);
        // _IOR('f', 45, 232 bytes), _IOR('f', 44, 8 bytes)
        assert_eq!(
            (2u32 << 30) | (232 << 16) | (u32::from(b'f') << 8) | 45,
            0x80E8_662D
        );
        assert_eq!(
            (2u32 << 30) | (8 << 16) | (u32::from(b'f') << 8) | 44,
            0x8008_662C
        );
        assert_eq!(std::mem::offset_of!(TuneSbParams, feature_incompat), 68);
    }
}
