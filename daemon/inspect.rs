//! Opening one file safely and measuring it: what `check` reports and what
//! the mover starts from. A file is pinned with O_PATH below a directory fd
//! (no symlink, no mount crossed), checked to be a regular file on the
//! expected filesystem, and only then reopened read-only to be mapped.
//! For a report, a file that statx shows to have at most one block is
//! measured without being opened at all.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::stat::SFlag;

use crate::assess::{Assessment, ExtentMap};
use crate::backend::Inspected;
use crate::backend::{self, Backend};
use crate::filesystem::{FsError, FsInfo};
use crate::outcome::{FailReason, Refusal, SkipReason};
use crate::sys::{self, Access, Flush};
use crate::target::Target;

/// What to do before mapping a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Map the file as it is: delayed allocations show as such (`check`).
    AsIs,
    /// fdatasync first, so that every range has real blocks (the mover).
    SyncData,
}

/// The filesystems met so far, each probed once.
#[derive(Debug, Default)]
pub struct Filesystems {
    known: HashMap<u64, Result<(Backend, FsInfo), FsError>>,
    /// What the operator decided for btrfs, given to each btrfs probed.
    btrfs: crate::backend::btrfs::Policy,
}

impl Filesystems {
    /// A cache that already knows one filesystem (the service probes each
    /// covered filesystem once, not once per file).
    pub fn seeded(dev: u64, backend: Backend, info: FsInfo) -> Self {
        Filesystems {
            known: HashMap::from([(dev, Ok((backend, info)))]),
            btrfs: Default::default(),
        }
    }

    /// Works on btrfs filesystems under `policy` (its extent threshold,
    /// nodatacow files), those known already included.
    pub fn set_btrfs_policy(&mut self, policy: crate::backend::btrfs::Policy) {
        self.btrfs = policy;
        for (_, info) in self.known.values_mut().flatten() {
            apply_btrfs_policy(info, policy);
        }
    }

    /// The filesystem that `fd` (on device `dev`) lives on, and its backend.
    pub fn get(
        &mut self,
        dev: u64,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(Backend, &FsInfo), Refusal> {
        let policy = self.btrfs;
        let entry = self.known.entry(dev).or_insert_with(|| {
            backend::probe(fd).map(|(backend, mut info)| {
                apply_btrfs_policy(&mut info, policy);
                (backend, info)
            })
        });
        match entry {
            Ok((backend, fs)) => Ok((*backend, fs)),
            Err(unsupported @ FsError::Unsupported { .. }) => {
                Err(SkipReason::UnsupportedFilesystem(format!("is on {unsupported}")).into())
            }
            Err(other) => Err(Refusal::Fail(FailReason::Filesystem(other.to_string()))),
        }
    }
}

fn apply_btrfs_policy(info: &mut FsInfo, policy: crate::backend::btrfs::Policy) {
    if let crate::filesystem::FsDetail::Btrfs(detail) = &mut info.detail {
        detail.policy = policy;
    }
}

/// Opens and measures `target`.
pub fn inspect(
    target: &Target,
    filesystems: &mut Filesystems,
    settle: Settle,
) -> Result<Inspected, Refusal> {
    let pinned = sys::pin_beneath(target.dir.as_fd(), Path::new(&target.name))?;
    let stat = sys::stat(pinned.as_fd())?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    match kind {
        SFlag::S_IFREG => {}
        SFlag::S_IFLNK => return Err(SkipReason::Symlink.into()),
        SFlag::S_IFDIR => return Err(SkipReason::NotRegular("directory").into()),
        SFlag::S_IFIFO => return Err(SkipReason::NotRegular("FIFO").into()),
        SFlag::S_IFSOCK => return Err(SkipReason::NotRegular("socket").into()),
        _ => return Err(SkipReason::NotRegular("device node").into()),
    }
    if target.expected_dev.is_some_and(|dev| dev != stat.st_dev) {
        return Err(SkipReason::OtherFilesystem.into());
    }
    let (backend, fs) = filesystems.get(stat.st_dev, pinned.as_fd())?;
    let fs = fs.clone();
    let file = sys::reopen(pinned.as_fd(), Access::ReadOnly)?;
    // The pin and the reopened fd are the same inode by construction; check
    // anyway, it costs one fstat.
    let reopened = sys::stat(file.as_fd())?;
    if (reopened.st_dev, reopened.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(Refusal::Fail(FailReason::Filesystem(
            "the file changed identity while being opened".into(),
        )));
    }
    let flags = sys::inode_flags(file.as_fd())?;
    let generation = sys::generation(file.as_fd())?;
    let subvolume = backend.subvolume(file.as_fd())?.map_or(0, |s| s.id);
    let key = crate::target::FileKey {
        subvolume,
        ino: reopened.st_ino,
        generation,
    };
    if target.expected_identity.is_some_and(|id| id != key) {
        return Err(SkipReason::Replaced.into());
    }
    let size = u64::try_from(reopened.st_size).unwrap_or(0);
    if settle == Settle::SyncData {
        sys::sync_data(file.as_fd())?;
    }
    let raw = sys::fiemap(file.as_fd(), Flush::No)?;
    let map = backend.extent_map(&raw, fs.block_size);
    let assessment = Assessment::of(&map, size, fs.max_extent_blocks);
    Ok(Inspected {
        pinned,
        file,
        backend,
        fs,
        dev: stat.st_dev,
        ino: stat.st_ino,
        size,
        mtime: reopened.st_mtime,
        generation,
        subvolume,
        flags,
        map,
        extents: raw,
        assessment,
    })
}

/// One file measured for a report (`check`): what `inspect` finds, less
/// what only a move needs (the generation, a writable open).
#[derive(Debug)]
pub struct Measured<'a> {
    pub fs: &'a FsInfo,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Mapped by indirect blocks: neither extents nor inline data.
    pub block_mapped: bool,
    pub assessment: Assessment,
    /// Bytes in extents shared with a snapshot or a reflinked copy, which
    /// no move rewrites.
    pub shared_bytes: u64,
    /// The file as it was opened (read-only) and mapped; None for one
    /// measured from its name alone.
    pub opened: Option<Opened>,
}

/// A file opened read-only, and its map.
#[derive(Debug)]
pub struct Opened {
    pub file: OwnedFd,
    pub map: ExtentMap,
}

/// Measures `target` for a report with as few syscalls as it takes. A file
/// that cannot have more than one extent (at most one block allocated) is
/// measured from one statx of its name and never opened; any other is
/// pinned, checked and reopened read-only as `inspect` does, and mapped.
///
/// For reports only: it reads no generation, so `expected_identity` is
/// not checked; whatever must be sure of a file's identity uses `inspect`.
///
/// A file that is not opened is taken as block-mapped only where its
/// backend says every file is (ext4 without the extent feature): the inode
/// flags take an open, and
/// such a file has one block at most, which no move or conversion would
/// change. (On a filesystem converted from ext3, its old one-block files
/// are block-mapped and not counted as such.)
pub fn measure<'a>(
    target: &Target,
    filesystems: &'a mut Filesystems,
) -> Result<Measured<'a>, Refusal> {
    let entry = sys::stat_beneath(target.dir.as_fd(), &target.name)?;
    refuse_unless_regular(entry.file_type)?;
    if entry.maybe_mount_root || target.expected_dev.is_some_and(|dev| dev != entry.dev) {
        return Err(SkipReason::OtherFilesystem.into());
    }
    // Not a mount root: the entry is on its directory's filesystem.
    let (backend, fs) = filesystems.get(entry.dev, target.dir.as_fd())?;
    let longest = fs.max_extent_blocks;
    if let Some(map) = at_most_one_extent(&entry, fs.block_size, fs.inline_data()) {
        return Ok(Measured {
            fs,
            dev: entry.dev,
            ino: entry.ino,
            size: entry.size,
            block_mapped: backend.block_mapped(fs, None),
            assessment: Assessment::of(&map, entry.size, longest),
            // One block at most: whether it is shared does not matter.
            shared_bytes: 0,
            opened: None,
        });
    }
    let pinned = sys::pin_beneath(target.dir.as_fd(), Path::new(&target.name))?;
    let stat = sys::stat(pinned.as_fd())?;
    // The name may have changed hands since the statx: what is pinned is
    // what gets measured.
    refuse_unless_regular(stat.st_mode & SFlag::S_IFMT.bits())?;
    if target.expected_dev.is_some_and(|dev| dev != stat.st_dev) || stat.st_dev != entry.dev {
        return Err(SkipReason::OtherFilesystem.into());
    }
    let file = sys::reopen(pinned.as_fd(), Access::ReadOnly)?;
    let flags = sys::inode_flags(file.as_fd())?;
    let raw = sys::fiemap(file.as_fd(), Flush::No)?;
    let map = backend.extent_map(&raw, fs.block_size);
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let shared_bytes = raw
        .iter()
        .filter(|e| e.flags.is_shared())
        .map(|e| e.length)
        .sum();
    Ok(Measured {
        fs,
        dev: stat.st_dev,
        ino: stat.st_ino,
        size,
        block_mapped: backend.block_mapped(fs, Some(flags)),
        assessment: Assessment::of(&map, size, longest),
        shared_bytes,
        opened: Some(Opened { file, map }),
    })
}

/// The map of a file that statx alone shows to have at most one extent,
/// or None when it takes FIEMAP to know; on a filesystem of blocks of
/// `block` bytes, where data may be `inline` in the inode or not.
fn at_most_one_extent(entry: &sys::EntryStat, block: u64, inline: bool) -> Option<ExtentMap> {
    let allocated = entry.blocks_512.saturating_mul(512);
    if allocated == 0 {
        // No block at all: no extent, unless the data is inline (which
        // FIEMAP reports as one extent).
        (entry.size == 0 || !inline).then(ExtentMap::default)
    } else if allocated <= block && entry.size > 0 && entry.size <= block {
        // One block, and data that fits in it: the block is the data's.
        // (st_blocks also counts an external xattr block: a larger file
        // with one block may be all hole, and an empty one's block is not
        // data; FIEMAP tells those apart. A file of at most one block that
        // is all hole and has an xattr block is the one case taken wrong:
        // one extent where there is none.) Where the block lies does not
        // change a one-extent file's figures.
        Some(ExtentMap {
            extents: vec![crate::assess::BlockExtent {
                logical: 0,
                physical: 0,
                len: 1,
            }],
            problem: None,
        })
    } else {
        None
    }
}

/// Refuses what is not a regular file, saying what it is.
fn refuse_unless_regular(file_type: u32) -> Result<(), Refusal> {
    match SFlag::from_bits_truncate(file_type & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Ok(()),
        SFlag::S_IFLNK => Err(SkipReason::Symlink.into()),
        SFlag::S_IFDIR => Err(SkipReason::NotRegular("directory").into()),
        SFlag::S_IFIFO => Err(SkipReason::NotRegular("FIFO").into()),
        SFlag::S_IFSOCK => Err(SkipReason::NotRegular("socket").into()),
        _ => Err(SkipReason::NotRegular("device node").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{KernelError, KernelErrorKind};

    #[test]
    fn a_file_gone_before_it_is_opened_is_skipped_not_failed() {
        assert_eq!(
            Refusal::from(sys::Error::NotFound),
            Refusal::Skip(SkipReason::Vanished)
        );
        assert!(matches!(
            Refusal::from(sys::Error::NoSpace),
            Refusal::Fail(FailReason::Kernel(KernelError {
                kind: KernelErrorKind::NoSpace,
                ..
            }))
        ));
    }

    fn entry(size: u64, blocks_512: u64) -> sys::EntryStat {
        sys::EntryStat {
            file_type: SFlag::S_IFREG.bits(),
            dev: 1,
            ino: 12,
            size,
            blocks_512,
            mtime: 0,
            ctime: 0,
            maybe_mount_root: false,
        }
    }

    fn extents(map: Option<ExtentMap>) -> Option<u64> {
        map.map(|m| Assessment::of(&m, 0, crate::backend::ext4::MAX_EXTENT_BLOCKS).extents)
    }

    #[test]
    fn statx_tells_files_of_at_most_one_block_apart() {
        let inline = false;
        // Empty, and all hole without blocks: no extent.
        assert_eq!(
            extents(at_most_one_extent(&entry(0, 0), 4096, inline)),
            Some(0)
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(1 << 20, 0), 4096, inline)),
            Some(0)
        );
        // Data in one block: one extent.
        assert_eq!(
            extents(at_most_one_extent(&entry(100, 8), 4096, inline)),
            Some(1)
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(4096, 8), 4096, inline)),
            Some(1)
        );
        // More than one block, or one block that may not be data (an
        // empty file's, a large sparse file's): FIEMAP decides.
        assert_eq!(
            extents(at_most_one_extent(&entry(4097, 16), 4096, inline)),
            None
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(100, 16), 4096, inline)),
            None
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(0, 8), 4096, inline)),
            None
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(1 << 20, 8), 4096, inline)),
            None
        );
    }

    #[test]
    fn inline_data_counts_as_one_extent() {
        let inline = true;
        // ext4 reports inline data as 512-byte units of st_blocks, or none.
        assert_eq!(
            extents(at_most_one_extent(&entry(100, 1), 4096, inline)),
            Some(1)
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(100, 0), 4096, inline)),
            None
        );
        assert_eq!(
            extents(at_most_one_extent(&entry(0, 0), 4096, inline)),
            Some(0)
        );
    }

    #[test]
    fn only_regular_files_are_measured() {
        assert!(refuse_unless_regular(SFlag::S_IFREG.bits()).is_ok());
        for (kind, word) in [
            (SFlag::S_IFIFO, "FIFO"),
            (SFlag::S_IFCHR, "device node"),
            (SFlag::S_IFBLK, "device node"),
            (SFlag::S_IFSOCK, "socket"),
            (SFlag::S_IFDIR, "directory"),
        ] {
            assert_eq!(
                refuse_unless_regular(kind.bits()),
                Err(Refusal::Skip(SkipReason::NotRegular(word)))
            );
        }
        assert_eq!(
            refuse_unless_regular(SFlag::S_IFLNK.bits()),
            Err(Refusal::Skip(SkipReason::Symlink))
        );
    }
}
