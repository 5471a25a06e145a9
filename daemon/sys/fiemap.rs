//! FS_IOC_FIEMAP: the extent map of a file, as the kernel reports it.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::{Error, Result};

/// How many extents one FIEMAP call returns at most; longer maps are paged.
const BATCH: usize = 512;
const FIEMAP_FLAG_SYNC: u32 = 0x1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct fiemap` followed by its extent array, as the ioctl wants it.
#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; BATCH],
}

// _IOWR('f', 11, struct fiemap): the size encoded is that of the header.
nix::ioctl_readwrite_bad!(fs_ioc_fiemap, 0xC020_660B, FiemapHeader);

bitflags::bitflags! {
    /// The flags FIEMAP reports on one extent (`FIEMAP_EXTENT_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ExtentFlags: u32 {
        const LAST = 0x1;
        const UNKNOWN = 0x2;
        const DELALLOC = 0x4;
        const ENCODED = 0x8;
        const DATA_ENCRYPTED = 0x80;
        const NOT_ALIGNED = 0x100;
        const DATA_INLINE = 0x200;
        const DATA_TAIL = 0x400;
        const UNWRITTEN = 0x800;
        const MERGED = 0x1000;
        const SHARED = 0x2000;
        // Flags of later kernels are kept as reported.
        const _ = !0;
    }
}

impl ExtentFlags {
    pub const fn is_last(self) -> bool {
        self.contains(Self::LAST)
    }
    pub const fn is_unwritten(self) -> bool {
        self.contains(Self::UNWRITTEN)
    }
    pub const fn is_delalloc(self) -> bool {
        self.contains(Self::DELALLOC)
    }
    pub const fn is_inline(self) -> bool {
        self.intersects(Self::DATA_INLINE.union(Self::DATA_TAIL))
    }
    /// The physical location is not a plain block address on this device.
    pub const fn location_unknown(self) -> bool {
        self.intersects(Self::UNKNOWN.union(Self::ENCODED).union(Self::NOT_ALIGNED))
    }
    pub const fn is_encrypted(self) -> bool {
        self.contains(Self::DATA_ENCRYPTED)
    }
    pub const fn is_shared(self) -> bool {
        self.contains(Self::SHARED)
    }
    pub const fn is_encoded(self) -> bool {
        self.contains(Self::ENCODED)
    }
}

/// One extent in bytes, exactly as FIEMAP gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: ExtentFlags,
}

/// Whether FIEMAP should flush the file's dirty data first, so that delayed
/// allocations get real blocks before they are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    No,
    Yes,
}

/// All extents of an open file, paging past the per-call limit.
pub fn fiemap(fd: BorrowedFd<'_>, flush: Flush) -> Result<Vec<Extent>> {
    fiemap_range(fd, flush, 0, u64::MAX)
}

/// The extents of an open file that overlap bytes `from..to`: a check of
/// one chunk costs what the chunk holds, not what the whole file does.
pub fn fiemap_range(fd: BorrowedFd<'_>, flush: Flush, from: u64, to: u64) -> Result<Vec<Extent>> {
    // SAFETY: FiemapRequest is plain integers; all-zero is a valid value.
    let mut request: Box<FiemapRequest> = Box::new(unsafe { std::mem::zeroed() });
    let mut extents = Vec::new();
    let mut start = from;
    while start < to {
        request.header = FiemapHeader {
            fm_start: start,
            fm_length: to - start,
            fm_flags: if flush == Flush::Yes {
                FIEMAP_FLAG_SYNC
            } else {
                0
            },
            fm_extent_count: BATCH as u32,
            ..FiemapHeader::default()
        };
        // SAFETY: the pointer covers a header followed by BATCH extents, as
        // fm_extent_count tells the kernel.
        unsafe { fs_ioc_fiemap(fd.as_raw_fd(), &mut request.header) }
            .map_err(|errno| Error::of("FIEMAP", errno))?;
        let mapped = (request.header.fm_mapped_extents as usize).min(BATCH);
        if mapped == 0 {
            break;
        }
        let batch = &request.extents[..mapped];
        // A concurrent writer can shift the map between pages: keep only
        // what lies past what we already have (on the first page, also
        // the extent that begins before `from` and reaches into it).
        let first_page = start == from;
        extents.extend(
            batch
                .iter()
                .filter(|e| first_page || e.fe_logical >= start)
                .map(|e| Extent {
                    logical: e.fe_logical,
                    physical: e.fe_physical,
                    length: e.fe_length,
                    flags: ExtentFlags::from_bits_retain(e.fe_flags),
                }),
        );
        let last = batch[mapped - 1];
        if ExtentFlags::from_bits_retain(last.fe_flags).is_last() || mapped < BATCH {
            break;
        }
        start = last.fe_logical.saturating_add(last.fe_length);
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_holds_the_extent_under_its_first_byte() {
        use std::io::Write;
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&vec![7u8; 256 * 1024]).expect("write");
        let fd = std::os::fd::AsFd::as_fd(&file);
        let all = fiemap(fd, Flush::Yes).expect("fiemap");
        let Some(first) = all.first() else {
            // A filesystem that maps nothing (tmpfs): nothing to compare.
            return;
        };
        let inside = first.logical + first.length / 2;
        let range = fiemap_range(fd, Flush::No, inside, inside + 1).expect("fiemap_range");
        // Some filesystems report it whole (btrfs), some cut at the start
        // asked (ext4's iomap): either way it covers the byte asked for.
        let covering = range.first().expect("the extent under the byte");
        assert!(covering.logical <= inside && inside < covering.logical + covering.length);
        assert!(range.len() <= all.len());
        assert!(fiemap_range(fd, Flush::No, 5, 5).expect("empty").is_empty());
    }

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<FiemapHeader>(), 32);
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
    }

    #[test]
    fn flags_decode() {
        let f = ExtentFlags::LAST | ExtentFlags::UNWRITTEN;
        assert!(f.is_last() && f.is_unwritten() && !f.is_delalloc() && !f.is_inline());
        assert!(ExtentFlags::ENCODED.location_unknown());
    }
}
