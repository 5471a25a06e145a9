//! Why a file on XFS cannot be defragmented, decided before anything is
//! written: from its extended flags (FS_IOC_FSGETXATTR), its FIEMAP flags
//! and the filesystem's geometry; and, once the donor is built, whether
//! the donor is any better. Each reason is a stable code an operator can
//! act on.

use crate::outcome::SkipReason;
use crate::sys::{Extent, Fsxattr};
use crate::xfs::Geometry;

/// What the XFS backend reads of a file before deciding.
#[derive(Debug, Clone, Copy)]
pub struct FileFacts<'a> {
    /// FS_IOC_FSGETXATTR.
    pub xattr: Fsxattr,
    /// DAX in effect by other means than the file's flag: a `dax=always`
    /// mount, or statx's STATX_ATTR_DAX.
    pub dax: bool,
    /// Listed in /proc/swaps.
    pub swapfile: bool,
    /// The file's size in bytes.
    pub size: u64,
    /// FIEMAP of the file, after fdatasync.
    pub extents: &'a [Extent],
}

/// Why `file` cannot be moved on the XFS filesystem `geometry` describes;
/// Ok when nothing in its flags, map or filesystem stands in the way.
pub fn refuse_unmovable(file: &FileFacts<'_>, geometry: &Geometry) -> Result<(), SkipReason> {
    let flags = file.xattr.xflags;
    let block_size = u64::from(geometry.block_size);
    let shared = || file.extents.iter().any(|e| e.flags.is_shared());
    let checks = [
        (flags.realtime(), SkipReason::Realtime),
        (flags.immutable(), SkipReason::Immutable),
        (flags.append_only(), SkipReason::AppendOnly),
        (flags.no_defrag(), SkipReason::NoDefragFlag),
        (flags.dax() || file.dax, SkipReason::Dax),
        (file.swapfile, SkipReason::Swapfile),
        (
            file.size < block_size,
            SkipReason::TooSmall { size: file.size },
        ),
        // Moving a shared extent would unshare it (XFS copies on write):
        // more space, and a reflink copy no longer a copy.
        (shared(), SkipReason::SharedExtents),
    ];
    if let Some((_, reason)) = checks.into_iter().find(|(refused, _)| *refused) {
        return Err(reason);
    }
    for e in file.extents {
        if e.flags.is_delalloc() {
            return Err(SkipReason::Busy(
                "it is being written right now (unallocated data after fdatasync)".into(),
            ));
        }
        if e.flags.is_inline() {
            return Err(SkipReason::InlineData);
        }
        if e.flags.location_unknown() || e.flags.is_encrypted() {
            return Err(SkipReason::Encrypted);
        }
    }
    Ok(())
}

/// Refuses a donor that lies in as many physical runs as the file or
/// more: the swap would write the whole file for nothing. Never report a
/// no-op as a success.
pub fn refuse_donor(file_runs: u64, donor_runs: u64) -> Result<(), SkipReason> {
    if donor_runs >= file_runs {
        return Err(SkipReason::NoContiguousFreeSpace {
            file_runs,
            donor_runs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{ExtentFlags, XFlags};

    fn geometry() -> Geometry {
        Geometry {
            block_size: 4096,
            ag_count: 4,
            ag_blocks: 98_304,
            data_blocks: 393_216,
            inode_size: 512,
            v5: true,
            realtime: false,
            reflink: true,
            rmapbt: false,
            exchange_range: false,
            commit_range: false,
            uuid: [0; 16],
        }
    }

    fn extent(flags: ExtentFlags) -> Extent {
        Extent {
            logical: 0,
            physical: 1 << 20,
            length: 1 << 20,
            flags,
        }
    }

    fn facts(xflags: XFlags, extents: &[Extent]) -> FileFacts<'_> {
        FileFacts {
            xattr: Fsxattr {
                xflags,
                ..Fsxattr::default()
            },
            dax: false,
            swapfile: false,
            size: 1 << 20,
            extents,
        }
    }

    #[test]
    fn a_plain_file_can_be_moved() {
        let extents = [extent(ExtentFlags::LAST)];
        assert_eq!(
            refuse_unmovable(&facts(XFlags::empty(), &extents), &geometry()),
            Ok(())
        );
    }

    #[test]
    fn each_flag_refuses_with_its_own_reason() {
        let extents = [extent(ExtentFlags::LAST)];
        let cases = [
            (XFlags::REALTIME, "realtime"),
            (XFlags::IMMUTABLE, "immutable"),
            (XFlags::APPEND, "append_only"),
            (XFlags::NODEFRAG, "no_defrag_flag"),
            (XFlags::DAX, "dax"),
        ];
        for (flag, code) in cases {
            let refused = refuse_unmovable(&facts(flag, &extents), &geometry());
            assert_eq!(refused.map_err(|r| r.code()), Err(code), "flag {flag:?}");
        }
    }

    #[test]
    fn shared_extents_swap_files_dax_mounts_and_tiny_files_are_refused() {
        let shared = [
            extent(ExtentFlags::empty()),
            extent(ExtentFlags::SHARED | ExtentFlags::LAST),
        ];
        let code = |f: FileFacts<'_>| refuse_unmovable(&f, &geometry()).map_err(|r| r.code());
        assert_eq!(code(facts(XFlags::empty(), &shared)), Err("shared_extents"));
        let plain = [extent(ExtentFlags::LAST)];
        assert_eq!(
            code(FileFacts {
                swapfile: true,
                ..facts(XFlags::empty(), &plain)
            }),
            Err("swapfile")
        );
        assert_eq!(
            code(FileFacts {
                dax: true,
                ..facts(XFlags::empty(), &plain)
            }),
            Err("dax")
        );
        assert_eq!(
            code(FileFacts {
                size: 100,
                ..facts(XFlags::empty(), &plain)
            }),
            Err("too_small")
        );
        let delalloc = [extent(ExtentFlags::DELALLOC)];
        assert_eq!(code(facts(XFlags::empty(), &delalloc)), Err("busy"));
    }

    #[test]
    fn a_donor_must_be_in_fewer_runs_than_the_file() {
        assert_eq!(refuse_donor(10, 1), Ok(()));
        assert_eq!(
            refuse_donor(3, 3).map_err(|r| r.code()),
            Err("no_contiguous_free_space")
        );
        assert!(refuse_donor(1, 2).is_err());
    }
}
