//! Why a file on btrfs is not handed to the kernel's defragmenter, each
//! reason a stable code an operator can act on, decided before anything
//! is written: a read-only mount or subvolume (snapshot), the immutable
//! and append-only flags, verity, an active swap file, nodatacow unless
//! the policy allows it, a writer holding the file, compressed data whose
//! algorithm is unknown, nothing but shared extents to defragment, too
//! little free space as btrfs counts it.

use std::os::fd::BorrowedFd;

use super::ranges::Selection;
use crate::btrfs::{self, CompressType, Subvolume};
use crate::outcome::SkipReason;
use crate::sys::{self, InodeFlags};

/// What decides whether a file on btrfs may be defragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub size: u64,
    pub block_size: u64,
    pub flags: InodeFlags,
    pub subvolume: Subvolume,
    /// The mount (or the filesystem) is read-only.
    pub mount_read_only: bool,
    /// Listed in /proc/swaps.
    pub swapfile: bool,
    /// Another process has it open for writing.
    pub writer: bool,
    /// Its `btrfs.compression` property.
    pub property: Option<CompressType>,
    /// What its mount compresses new writes with.
    pub mount_compression: Option<CompressType>,
}

impl FileFacts {
    /// Gathers the facts of the file `file` (open read-only, so that a
    /// read lease can tell whether anyone writes it) whose stat is
    /// (`dev`, `ino`), on a mount that is read-only or not.
    pub fn probe(file: BorrowedFd<'_>, mount_read_only: bool) -> sys::Result<FileFacts> {
        let stat = sys::stat(file)?;
        let info = btrfs::fs_info(file)?;
        let dev = stat.st_dev;
        Ok(FileFacts {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            block_size: u64::from(info.sectorsize),
            flags: sys::inode_flags(file)?,
            subvolume: btrfs::subvolume(file)?,
            mount_read_only,
            swapfile: sys::is_active_swapfile(dev, stat.st_ino),
            writer: has_writer(file)?,
            property: btrfs::compression_property(file)?,
            mount_compression: btrfs::mount_compression(file)?,
        })
    }
}

/// Whether a process has `file` open for writing: a read lease is granted
/// only when none has. Taken and given back at once.
fn has_writer(file: BorrowedFd<'_>) -> sys::Result<bool> {
    match sys::take_read_lease(file) {
        Ok(_lease) => Ok(false),
        Err(sys::Error::OpenForWriting) => Ok(true),
        Err(other) => Err(other),
    }
}

/// Why `file` cannot be defragmented at all; Ok when nothing in its flags,
/// subvolume or use stands in the way. `allow_nocow`: the policy lets
/// nodatacow files be rewritten (copy-on-write, once).
pub fn refuse_unmovable(file: &FileFacts, allow_nocow: bool) -> Result<(), SkipReason> {
    let flags = file.flags;
    let checks = [
        (file.mount_read_only, SkipReason::ReadOnly),
        (file.subvolume.read_only, SkipReason::ReadOnlySubvolume),
        (flags.immutable(), SkipReason::Immutable),
        (flags.append_only(), SkipReason::AppendOnly),
        (flags.verity(), SkipReason::Encrypted),
        (file.swapfile, SkipReason::Swapfile),
        (flags.nocow() && !allow_nocow, SkipReason::NoCow),
        (
            file.size < file.block_size.max(1),
            SkipReason::TooSmall { size: file.size },
        ),
        (
            file.writer,
            SkipReason::Busy("another process has it open for writing".into()),
        ),
    ];
    match checks.into_iter().find(|(refused, _)| *refused) {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

/// The algorithm to rewrite `file`'s compressed ranges with. DEFRAG_RANGE
/// never rewrites a full 128 KiB compressed extent unless asked to
/// compress, so compressed data is always passed on with its algorithm:
/// the file's property first (it wins over the mount at writeback too),
/// then the mount's. Neither: refused, rather than guessed.
pub fn compression_for(file: &FileFacts) -> Result<CompressType, SkipReason> {
    file.property
        .or(file.mount_compression)
        .ok_or(SkipReason::CompressionUnknown)
}

/// Why `selection` gives nothing to do: only shared extents were worth
/// defragmenting (SharedExtents), or nothing was (AlreadyContiguous).
pub fn refuse_selection(selection: &Selection, ideal: u64) -> Result<(), SkipReason> {
    if !selection.targets.is_empty() {
        return Ok(());
    }
    if selection.shared_small_pieces > 0 {
        return Err(SkipReason::SharedExtents);
    }
    Err(SkipReason::AlreadyContiguous {
        extents: selection.pieces,
        ideal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> FileFacts {
        FileFacts {
            size: 1 << 20,
            block_size: 4096,
            flags: InodeFlags::empty(),
            subvolume: Subvolume {
                id: 256,
                read_only: false,
                uuid: [1; 16],
                parent_uuid: None,
            },
            mount_read_only: false,
            swapfile: false,
            writer: false,
            property: None,
            mount_compression: None,
        }
    }

    #[test]
    fn each_refusal_has_its_code() {
        assert_eq!(refuse_unmovable(&facts(), false), Ok(()));
        let code = |f: FileFacts, allow| refuse_unmovable(&f, allow).map_err(|r| r.code());
        let mut f = facts();
        f.subvolume.read_only = true;
        assert_eq!(code(f, false), Err("read_only_subvolume"));
        let mut f = facts();
        f.flags = InodeFlags::NOCOW;
        assert_eq!(code(f, false), Err("nocow"));
        assert_eq!(code(f, true), Ok(()));
        let mut f = facts();
        f.swapfile = true;
        f.flags = InodeFlags::NOCOW;
        assert_eq!(code(f, true), Err("swapfile"));
        let mut f = facts();
        f.writer = true;
        assert_eq!(code(f, false), Err("busy"));
        let mut f = facts();
        f.mount_read_only = true;
        assert_eq!(code(f, false), Err("read_only"));
        let mut f = facts();
        f.size = 100;
        assert_eq!(code(f, false), Err("too_small"));
    }

    #[test]
    fn compression_is_the_propertys_then_the_mounts_never_a_guess() {
        let mut f = facts();
        assert_eq!(compression_for(&f), Err(SkipReason::CompressionUnknown));
        f.mount_compression = Some(CompressType::Zstd);
        assert_eq!(compression_for(&f), Ok(CompressType::Zstd));
        f.property = Some(CompressType::Lzo);
        assert_eq!(compression_for(&f), Ok(CompressType::Lzo));
    }

    #[test]
    fn an_empty_selection_says_why() {
        let shared = Selection {
            shared_small_pieces: 3,
            pieces: 5,
            ..Selection::default()
        };
        assert_eq!(refuse_selection(&shared, 1), Err(SkipReason::SharedExtents));
        let plain = Selection {
            pieces: 1,
            ..Selection::default()
        };
        assert!(matches!(
            refuse_selection(&plain, 1),
            Err(SkipReason::AlreadyContiguous { .. })
        ));
    }
}
