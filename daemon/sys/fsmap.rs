//! FS_IOC_GETFSMAP: where a filesystem's free space lies.
//!
//! Asking has a side effect the mover counts on: to answer, ext4 loads the
//! buddy bitmap of every block group, and its allocator only looks for
//! large aligned chunks in groups whose buddy is loaded. Right after a
//! mount almost none is, and a large fallocate gets the small free pieces
//! near its goal instead of the large runs further away.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::{Error, Result};

/// Records fetched per call; longer maps are paged.
const BATCH: usize = 1024;
/// `fmr_flags`: the owner is a special one (free space, metadata, ...).
const FMR_OF_SPECIAL_OWNER: u32 = 0x10;
/// `fmr_flags`: the last record of the map.
const FMR_OF_LAST: u32 = 0x20;
/// `fmr_owner` of free space: FMR_OWNER(0, 1).
const FMR_OWN_FREE: u64 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Fsmap {
    fmr_device: u32,
    fmr_flags: u32,
    fmr_physical: u64,
    fmr_owner: u64,
    fmr_offset: u64,
    fmr_length: u64,
    fmr_reserved: [u64; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FsmapHead {
    fmh_iflags: u32,
    fmh_oflags: u32,
    fmh_count: u32,
    fmh_entries: u32,
    fmh_reserved: [u64; 6],
    fmh_keys: [Fsmap; 2],
}

/// `struct fsmap_head` followed by its record array, as the ioctl wants it.
#[repr(C)]
struct FsmapRequest {
    head: FsmapHead,
    records: [Fsmap; BATCH],
}

// _IOWR('X', 59, struct fsmap_head): the size encoded is that of the head.
nix::ioctl_readwrite_bad!(fs_ioc_getfsmap, 0xC0C0_583B, FsmapHead);

/// A free run on the filesystem's device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeExtent {
    pub physical: u64,
    pub length: u64,
}

/// Calls `visit` with every free run of the filesystem `fd` lives on, in
/// disk order. ext4 may report one run in several adjacent pieces (at
/// block group edges): the caller joins them if it cares.
pub fn free_extents(fd: BorrowedFd<'_>, mut visit: impl FnMut(FreeExtent)) -> Result<()> {
    // SAFETY: FsmapRequest is plain integers; all-zero is a valid value.
    let mut request: Box<FsmapRequest> = Box::new(unsafe { std::mem::zeroed() });
    let everything = Fsmap {
        fmr_device: u32::MAX,
        fmr_flags: u32::MAX,
        fmr_physical: u64::MAX,
        fmr_owner: u64::MAX,
        fmr_offset: u64::MAX,
        ..Fsmap::default()
    };
    let mut low = Fsmap::default();
    loop {
        request.head = FsmapHead {
            fmh_count: BATCH as u32,
            fmh_keys: [low, everything],
            ..FsmapHead::default()
        };
        // SAFETY: the pointer covers a head followed by BATCH records, as
        // fmh_count tells the kernel.
        unsafe { fs_ioc_getfsmap(fd.as_raw_fd(), &mut request.head) }
            .map_err(|errno| Error::of("GETFSMAP", errno))?;
        let entries = (request.head.fmh_entries as usize).min(BATCH);
        let records = &request.records[..entries];
        for record in records {
            if record.fmr_flags & FMR_OF_SPECIAL_OWNER != 0 && record.fmr_owner == FMR_OWN_FREE {
                visit(FreeExtent {
                    physical: record.fmr_physical,
                    length: record.fmr_length,
                });
            }
        }
        let end = |r: &Fsmap| r.fmr_physical.saturating_add(r.fmr_length);
        match records.last() {
            // The next call starts after the last record returned.
            Some(last) if last.fmr_flags & FMR_OF_LAST == 0 && end(last) > end(&low) => low = *last,
            _ => return Ok(()),
        }
    }
}

/// `fmr_owner` of ext4's block bitmaps: FMR_OWNER('f', 3).
const EXT4_FMR_OWN_BLKBM: u64 = (0x66 << 32) | 3;
/// Records read to find the first block bitmaps: they follow the
/// superblock, the group descriptors and their reserve.
const FIRST_RECORDS: usize = 16;

/// The length in bytes of the first run of block bitmaps on the
/// filesystem `fd` lives on (ext4 merges adjacent metadata of one kind
/// into one record), or None when the first records hold none.
pub fn first_block_bitmap_run(fd: BorrowedFd<'_>) -> Result<Option<u64>> {
    // SAFETY: FsmapRequest is plain integers; all-zero is a valid value.
    let mut request: Box<FsmapRequest> = Box::new(unsafe { std::mem::zeroed() });
    request.head = FsmapHead {
        fmh_count: FIRST_RECORDS as u32,
        fmh_keys: [
            Fsmap::default(),
            Fsmap {
                fmr_device: u32::MAX,
                fmr_flags: u32::MAX,
                fmr_physical: u64::MAX,
                fmr_owner: u64::MAX,
                fmr_offset: u64::MAX,
                ..Fsmap::default()
            },
        ],
        ..FsmapHead::default()
    };
    // SAFETY: the pointer covers a head followed by BATCH (more than
    // FIRST_RECORDS) records, and fmh_count tells the kernel how many.
    unsafe { fs_ioc_getfsmap(fd.as_raw_fd(), &mut request.head) }
        .map_err(|errno| Error::of("GETFSMAP", errno))?;
    let entries = (request.head.fmh_entries as usize).min(FIRST_RECORDS);
    Ok(request.records[..entries]
        .iter()
        .find(|r| r.fmr_flags & FMR_OF_SPECIAL_OWNER != 0 && r.fmr_owner == EXT4_FMR_OWN_BLKBM)
        .map(|r| r.fmr_length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<Fsmap>(), 64);
        assert_eq!(std::mem::size_of::<FsmapHead>(), 192);
        // _IOWR('X', 59, 192 bytes)
        assert_eq!(
            (3u32 << 30) | (192 << 16) | (u32::from(b'X') << 8) | 59,
            0xC0C0_583B
        );
    }
}
