//! XFS_IOC_FSGEOMETRY: the filesystem's shape (block size, allocation
//! groups, realtime device) and features (reflink, rmap, exchange-range),
//! as `xfs_info` prints them.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::sys::{Error, Result};

/// `struct xfs_fsop_geom_v4` (xfs_fs.h), 112 bytes: also the first 112
/// bytes of the v5 structure.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawGeomV4 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
    logsunit: u32,
}

/// `struct xfs_fsop_geom` (v5, Linux 4.19+), 256 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawGeom {
    v4: RawGeomV4,
    sick: u32,
    checked: u32,
    reserved: [u64; 17],
}

// _IOR('X', 126, struct xfs_fsop_geom) and _IOR('X', 124, struct xfs_fsop_geom_v4).
nix::ioctl_read_bad!(xfs_ioc_fsgeometry, 0x8100_587E, RawGeom);
nix::ioctl_read_bad!(xfs_ioc_fsgeometry_v4, 0x8070_587C, RawGeomV4);

/// Feature bits of `xfs_fsop_geom.flags` that defragd reads.
const FLAG_V5SB: u32 = 1 << 15;
const FLAG_RMAPBT: u32 = 1 << 19;
const FLAG_REFLINK: u32 = 1 << 20;
/// XFS_FSOP_GEOM_FLAGS_EXCHANGE_RANGE, Linux 6.10+ (xfsprogs 6.1's header
/// predates it): files can exchange ranges of their contents, the
/// kernel's newer and better swap (XFS_IOC_EXCHANGE_RANGE with
/// START_COMMIT/COMMIT_RANGE's freshness check).
const FLAG_EXCHANGE_RANGE: u32 = 1 << 24;

/// XFS_MAX_BMBT_EXTLEN: the longest extent a block map record holds (21
/// bits of length).
pub const MAX_BMBT_EXTLEN: u64 = (1 << 21) - 1;

/// An XFS filesystem's shape and the features defragd cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Data block size in bytes.
    pub block_size: u32,
    pub ag_count: u32,
    /// Blocks in one allocation group: no extent crosses an AG.
    pub ag_blocks: u32,
    pub data_blocks: u64,
    /// Inode size in bytes.
    pub inode_size: u32,
    /// Version 5 superblock (metadata checksums): inodes have the larger
    /// v3 core.
    pub v5: bool,
    /// A realtime device is attached (files flagged realtime keep their
    /// data there).
    pub realtime: bool,
    /// Files can share blocks (reflink, dedupe).
    pub reflink: bool,
    /// The reverse-mapping btree: SWAPEXT then remaps extent by extent
    /// (slower, but any fork format goes).
    pub rmapbt: bool,
    /// XFS_IOC_EXCHANGE_RANGE is available on this filesystem.
    pub exchange_range: bool,
    /// The kernel also answers XFS_IOC_START_COMMIT (Linux 6.12+; the
    /// feature flag came in 6.10). Not in the geometry: the backend's
    /// probe asks the kernel and sets it; false from the ioctl alone.
    pub commit_range: bool,
    pub uuid: [u8; 16],
}

impl Geometry {
    fn from_raw(raw: &RawGeomV4) -> Geometry {
        Geometry {
            block_size: raw.blocksize,
            ag_count: raw.agcount,
            ag_blocks: raw.agblocks,
            data_blocks: raw.datablocks,
            inode_size: raw.inodesize,
            v5: raw.flags & FLAG_V5SB != 0,
            realtime: raw.rtblocks > 0,
            reflink: raw.flags & FLAG_REFLINK != 0,
            rmapbt: raw.flags & FLAG_RMAPBT != 0,
            exchange_range: raw.flags & FLAG_EXCHANGE_RANGE != 0,
            commit_range: false,
            uuid: raw.uuid,
        }
    }

    /// Bytes of an inode left for its data and attribute forks (XFS's
    /// "literal area"): the inode less its core (176 bytes for v3 inodes,
    /// 100 for older ones).
    pub fn literal_area(&self) -> u32 {
        let core = if self.v5 { 176 } else { 100 };
        self.inode_size.saturating_sub(core)
    }

    /// Whether files here are exchanged range by range with COMMIT_RANGE,
    /// each range committed on its own (so a stopped move resumes where it
    /// stopped), rather than swapped whole with SWAPEXT.
    pub fn commits_ranges(&self) -> bool {
        self.exchange_range && self.commit_range
    }

    /// The longest extent a file can get, in blocks: a block map record's
    /// limit, and never more than one allocation group.
    pub fn max_extent_blocks(&self) -> u64 {
        MAX_BMBT_EXTLEN.min(u64::from(self.ag_blocks)).max(1)
    }
}

/// The geometry of the XFS filesystem `fd` lives on. Kernels before 4.19
/// only know the v4 structure; they are asked for that one instead.
pub fn geometry(fd: BorrowedFd<'_>) -> Result<Geometry> {
    let mut raw = RawGeom::default();
    // SAFETY: `raw` is a valid, writable struct xfs_fsop_geom (256 bytes,
    // the size the request number encodes).
    match unsafe { xfs_ioc_fsgeometry(fd.as_raw_fd(), &mut raw) } {
        Ok(_) => Ok(Geometry::from_raw(&raw.v4)),
        Err(Errno::ENOTTY) | Err(Errno::EINVAL) => {
            let mut v4 = RawGeomV4::default();
            // SAFETY: as above, with the 112-byte v4 structure.
            unsafe { xfs_ioc_fsgeometry_v4(fd.as_raw_fd(), &mut v4) }
                .map_err(|errno| Error::of("XFS_IOC_FSGEOMETRY", errno))?;
            Ok(Geometry::from_raw(&v4))
        }
        Err(errno) => Err(Error::of("XFS_IOC_FSGEOMETRY", errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_layout_matches_xfs_fs_h() {
        // Sizes and offsets as gcc computes them from xfsprogs' xfs_fs.h.
        assert_eq!(size_of::<RawGeomV4>(), 112);
        assert_eq!(size_of::<RawGeom>(), 256);
        assert_eq!(offset_of!(RawGeomV4, datablocks), 32);
        assert_eq!(offset_of!(RawGeomV4, uuid), 64);
        assert_eq!(offset_of!(RawGeomV4, version), 88);
        assert_eq!(offset_of!(RawGeomV4, flags), 92);
        assert_eq!(offset_of!(RawGeomV4, logsunit), 108);
        assert_eq!(offset_of!(RawGeom, sick), 112);
        assert_eq!(offset_of!(RawGeom, reserved), 120);
    }

    #[test]
    fn ioctl_numbers_encode_the_struct_sizes() {
        let read = |nr: u32, size: u32| (2 << 30) | (size << 16) | (u32::from(b'X') << 8) | nr;
        assert_eq!(read(126, 256), 0x8100_587E);
        assert_eq!(read(124, 112), 0x8070_587C);
    }

    #[test]
    fn features_and_the_longest_extent_decode() {
        let raw = RawGeomV4 {
            blocksize: 4096,
            agblocks: 98_304,
            agcount: 4,
            flags: FLAG_REFLINK | FLAG_EXCHANGE_RANGE | FLAG_V5SB,
            inodesize: 512,
            rtblocks: 0,
            uuid: [7; 16],
            ..RawGeomV4::default()
        };
        let g = Geometry::from_raw(&raw);
        assert!(g.reflink && g.exchange_range && !g.rmapbt && !g.realtime);
        assert_eq!(g.uuid, [7; 16]);
        assert_eq!(g.max_extent_blocks(), 98_304);
        assert_eq!(g.literal_area(), 336);
        let big = Geometry::from_raw(&RawGeomV4 {
            agblocks: 1 << 24,
            rtblocks: 10,
            ..raw
        });
        assert_eq!(big.max_extent_blocks(), MAX_BMBT_EXTLEN);
        assert!(big.realtime);
    }

    #[test]
    fn ranges_are_committed_only_with_the_feature_and_the_kernels_ioctl() {
        let raw = RawGeomV4 {
            flags: FLAG_EXCHANGE_RANGE,
            ..RawGeomV4::default()
        };
        let mut g = Geometry::from_raw(&raw);
        // The ioctl alone never says the kernel has START_COMMIT.
        assert!(g.exchange_range && !g.commit_range && !g.commits_ranges());
        g.commit_range = true;
        assert!(g.commits_ranges());
        g.exchange_range = false;
        assert!(!g.commits_ranges(), "a 6.12 kernel on an older filesystem");
    }
}
