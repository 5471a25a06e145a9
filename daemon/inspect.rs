//! Opening one file safely and measuring it: what `check` reports and what
//! the mover starts from. A file is pinned with O_PATH below a directory fd
//! (no symlink, no mount crossed), checked to be a regular file on the
//! expected filesystem, and only then reopened read-only to be mapped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::SFlag;

use crate::assess::{Assessment, ExtentMap};
use crate::ext4::{self, Access, Flush, FsError, FsInfo, InodeFlags};

/// What to do before mapping a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Map the file as it is: delayed allocations show as such (`check`).
    AsIs,
    /// fdatasync first, so that every range has real blocks (the mover).
    SyncData,
}
use crate::outcome::{FailReason, SkipReason};

/// A file to work on: a name in an open directory. The path is for people.
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    pub path: PathBuf,
    /// The device the file must be on (the tree's), when known.
    pub expected_dev: Option<u64>,
    /// The inode and generation the file must have (a queued job's).
    pub expected_identity: Option<(u64, u32)>,
}

/// Why a file could not be inspected.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Skip(SkipReason),
    Fail(FailReason),
}

impl From<SkipReason> for Refusal {
    fn from(r: SkipReason) -> Self {
        Refusal::Skip(r)
    }
}

impl From<ext4::Error> for Refusal {
    fn from(e: ext4::Error) -> Self {
        match e {
            ext4::Error::Symlink => Refusal::Skip(SkipReason::Symlink),
            ext4::Error::CrossesMount => Refusal::Skip(SkipReason::OtherFilesystem),
            ext4::Error::ReadOnly => Refusal::Skip(SkipReason::ReadOnly),
            other => Refusal::Fail(FailReason::Kernel(other)),
        }
    }
}

/// The filesystems met so far, each probed once.
#[derive(Debug, Default)]
pub struct Filesystems {
    known: HashMap<u64, Result<FsInfo, FsError>>,
}

impl Filesystems {
    /// A cache that already knows one filesystem (the service probes each
    /// covered filesystem once, not once per file).
    pub fn seeded(dev: u64, info: FsInfo) -> Self {
        Filesystems {
            known: HashMap::from([(dev, Ok(info))]),
        }
    }

    /// The filesystem that `fd` (on device `dev`) lives on.
    pub fn get(&mut self, dev: u64, fd: std::os::fd::BorrowedFd<'_>) -> Result<&FsInfo, Refusal> {
        let entry = self.known.entry(dev).or_insert_with(|| ext4::probe(fd));
        match entry {
            Ok(fs) => Ok(fs),
            Err(FsError::NotExt4(kind)) => Err(SkipReason::NotExt4(format!(
                "is on a {} filesystem, not ext4",
                fs_name(*kind)
            ))
            .into()),
            Err(other) => Err(Refusal::Fail(FailReason::Filesystem(other.to_string()))),
        }
    }
}

fn fs_name(magic: i64) -> String {
    match magic {
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x6969 => "nfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("non-ext4 (type {other:#x})"),
    }
}

/// A file opened read-only and measured.
#[derive(Debug)]
pub struct Inspected {
    /// The O_PATH pin: reopening it gives exactly this inode.
    pub pinned: OwnedFd,
    pub file: OwnedFd,
    pub fs: FsInfo,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Last data change, seconds since the epoch.
    pub mtime: i64,
    pub generation: u32,
    pub flags: InodeFlags,
    pub map: ExtentMap,
    pub assessment: Assessment,
}

/// Opens and measures `target`.
pub fn inspect(
    target: &Target,
    filesystems: &mut Filesystems,
    settle: Settle,
) -> Result<Inspected, Refusal> {
    let pinned = ext4::pin_beneath(target.dir.as_fd(), Path::new(&target.name))?;
    let stat = ext4::stat(pinned.as_fd())?;
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
    let fs = filesystems.get(stat.st_dev, pinned.as_fd())?.clone();
    let file = ext4::reopen(pinned.as_fd(), Access::ReadOnly)?;
    // The pin and the reopened fd are the same inode by construction; check
    // anyway, it costs one fstat.
    let reopened = ext4::stat(file.as_fd())?;
    if (reopened.st_dev, reopened.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(Refusal::Fail(FailReason::Filesystem(
            "the file changed identity while being opened".into(),
        )));
    }
    let flags = ext4::inode_flags(file.as_fd())?;
    let generation = ext4::generation(file.as_fd())?;
    if target
        .expected_identity
        .is_some_and(|id| id != (reopened.st_ino, generation))
    {
        return Err(SkipReason::Replaced.into());
    }
    let size = u64::try_from(reopened.st_size).unwrap_or(0);
    if settle == Settle::SyncData {
        ext4::sync_data(file.as_fd())?;
    }
    let raw = ext4::fiemap(file.as_fd(), Flush::No)?;
    let map = ExtentMap::from_fiemap(&raw, u64::from(fs.superblock.block_size));
    let assessment = Assessment::of(&map, size);
    Ok(Inspected {
        pinned,
        file,
        fs,
        dev: stat.st_dev,
        ino: stat.st_ino,
        size,
        mtime: reopened.st_mtime,
        generation,
        flags,
        map,
        assessment,
    })
}
