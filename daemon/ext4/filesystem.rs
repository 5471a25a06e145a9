//! Facts about the filesystem a file lives on: is it ext4 (statfs), its
//! layout (the superblock, read from the block device; where the device
//! cannot be read, what the kernel tells of it, see `layout`) and how it
//! is mounted (/proc/self/mountinfo). Free space is read fresh each time.

use std::fmt;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::PathBuf;

use nix::sys::stat::fstat;
use nix::sys::statfs::fstatfs;
use procfs_core::process::MountInfo;

use super::layout::{self, Guess};
use crate::sys::error::Error;

/// ext4's statfs magic number (ext2 and ext3 share it).
pub const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;

/// The filesystem's UUID: with an inode number and generation, it names a
/// file for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsUuid(pub [u8; 16]);

impl fmt::Display for FsUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

/// What the superblock says about the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: FsUuid,
    pub block_size: u32,
    pub blocks_per_group: u32,
    /// Block groups per flex group, when flex_bg is on.
    pub groups_per_flex: Option<u32>,
    pub has_extents: bool,
    pub bigalloc: bool,
    pub inline_data: bool,
    pub encryption: bool,
}

impl Superblock {
    /// Parses the 1024 bytes of an ext2/3/4 superblock.
    pub fn parse(raw: &[u8]) -> Option<Superblock> {
        let u16_at = |o: usize| raw.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            raw.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0x38)? != EXT4_SUPER_MAGIC as u16 {
            return None;
        }
        let log_block_size = u32_at(0x18)?;
        let block_size = 1024u32.checked_shl(log_block_size)?;
        let incompat = u32_at(0x60)?;
        let ro_compat = u32_at(0x64)?;
        let uuid: [u8; 16] = raw.get(0x68..0x78)?.try_into().ok()?;
        let log_groups_per_flex = u32::from(*raw.get(0x174)?);
        let flex_bg = incompat & layout::INCOMPAT_FLEX_BG != 0;
        Some(Superblock {
            uuid: FsUuid(uuid),
            block_size,
            blocks_per_group: u32_at(0x20)?,
            groups_per_flex: flex_bg.then(|| 1u32.checked_shl(log_groups_per_flex).unwrap_or(1)),
            has_extents: incompat & layout::INCOMPAT_EXTENTS != 0,
            bigalloc: ro_compat & layout::RO_COMPAT_BIGALLOC != 0,
            inline_data: incompat & layout::INCOMPAT_INLINE_DATA != 0,
            encryption: incompat & layout::INCOMPAT_ENCRYPT != 0,
        })
    }
}

/// Everything decided once per filesystem.
#[derive(Debug, Clone)]
pub struct FsInfo {
    /// st_dev of files on it.
    pub dev: u64,
    pub mount_point: PathBuf,
    pub device: PathBuf,
    pub superblock: Superblock,
    /// Where `superblock` came from.
    pub layout: Layout,
    pub read_only: bool,
    pub data_journal: bool,
    pub dax: bool,
}

/// Where a filesystem's layout facts came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The superblock, read from the block device.
    Superblock,
    /// The kernel (statfs, ioctls), because the block device could not be
    /// read; with what had to be guessed.
    Kernel {
        unreadable: String,
        guessed: Vec<Guess>,
    },
}

impl FsInfo {
    /// What an operator should hear, once per filesystem, when the layout
    /// is not the superblock's: what could not be read and what that
    /// changes. None when the superblock was read.
    pub fn layout_note(&self) -> Option<String> {
        let Layout::Kernel {
            unreadable,
            guessed,
        } = &self.layout
        else {
            return None;
        };
        let guesses = if guessed.is_empty() {
            "nothing had to be guessed".to_string()
        } else {
            let list: Vec<&str> = guessed.iter().map(|g| g.describe()).collect();
            format!("guessed: {}", list.join(", "))
        };
        Some(format!(
            "{}: its block device cannot be read ({unreadable}), so its layout comes from the \
             kernel instead ({guesses}); files are still measured and moved, and only e4defrag's \
             score and where new copies are placed use the guessed figures (give defragd read \
             access to the device to have them exact)",
            crate::escape::escaped(&self.mount_point)
        ))
    }
}

/// Why a filesystem cannot be worked on at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("not an ext4 filesystem (statfs type {0:#x}): defragd only works on ext4")]
    NotExt4(i64),
    #[error("the mount for device {0} is not in /proc/self/mountinfo: is /proc mounted?")]
    MountNotFound(String),
    #[error(transparent)]
    Call(#[from] Error),
}

/// Probes the filesystem that `fd` lives on.
pub fn probe(fd: BorrowedFd<'_>) -> std::result::Result<FsInfo, FsError> {
    let statfs = fstatfs(fd).map_err(|errno| Error::of("fstatfs", errno))?;
    let fs_type = statfs.filesystem_type().0 as i64;
    if fs_type != EXT4_SUPER_MAGIC {
        return Err(FsError::NotExt4(fs_type));
    }
    let dev = fstat(fd).map_err(|errno| Error::of("fstat", errno))?.st_dev;
    let mount = find_mount(dev)?;
    let (device, superblock, layout) = match read_superblock(mount.mount_source.as_deref(), dev) {
        Ok((device, superblock)) => (device, superblock, Layout::Superblock),
        Err(unreadable) => {
            let (superblock, guessed) = layout::from_kernel(fd, &statfs);
            let device = PathBuf::from(mount.mount_source.clone().unwrap_or_default());
            (
                device,
                superblock,
                Layout::Kernel {
                    unreadable,
                    guessed,
                },
            )
        }
    };
    let has = |options: &std::collections::HashMap<String, Option<String>>,
               key: &str,
               value: Option<&str>| {
        options
            .get(key)
            .is_some_and(|v| value.is_none() || v.as_deref() == value)
    };
    let super_opts = &mount.super_options;
    Ok(FsInfo {
        dev,
        mount_point: mount.mount_point.clone(),
        device,
        read_only: has(&mount.mount_options, "ro", None) || has(super_opts, "ro", None),
        data_journal: has(super_opts, "data", Some("journal")),
        dax: has(super_opts, "dax", None)
            || has(super_opts, "dax", Some("always"))
            || has(super_opts, "dax", Some("inode")),
        superblock,
        layout,
    })
}

fn majmin(dev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    )
}

fn find_mount(dev: u64) -> std::result::Result<MountInfo, FsError> {
    let wanted = majmin(dev);
    let not_found = || FsError::MountNotFound(wanted.clone());
    // The first mount of the device is the one its superblock options show;
    // bind mounts of the same device share them.
    crate::sys::mounts()
        .ok_or_else(not_found)?
        .into_iter()
        .find(|m| m.majmin == wanted)
        .ok_or_else(not_found)
}

/// Reads the superblock from the block device `dev`. The mount source is
/// only a name (it can be `/dev/root`, or stale), so each candidate node is
/// checked to be that very device before it is trusted.
fn read_superblock(
    mount_source: Option<&str>,
    dev: u64,
) -> std::result::Result<(PathBuf, Superblock), String> {
    let id = majmin(dev);
    let mut candidates: Vec<PathBuf> = mount_source.map(PathBuf::from).into_iter().collect();
    candidates.push(PathBuf::from(format!("/dev/block/{id}")));
    if let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{id}/uevent")) {
        if let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            candidates.push(PathBuf::from("/dev").join(name));
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|path| seen.insert(path.clone()));
    let mut reasons = Vec::new();
    for path in &candidates {
        match superblock_from(path, dev) {
            Ok(sb) => return Ok((path.clone(), sb)),
            Err(reason) => reasons.push(format!("{}: {reason}", path.display())),
        }
    }
    Err(format!("device {id}: {}", reasons.join("; ")))
}

fn superblock_from(path: &std::path::Path, dev: u64) -> std::result::Result<Superblock, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.rdev() != dev || !meta.file_type().is_block_device() {
        return Err(format!("not the device {} the file lives on", majmin(dev)));
    }
    let mut raw = vec![0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut raw, SUPERBLOCK_OFFSET)
        .map_err(|e| e.to_string())?;
    Superblock::parse(&raw).ok_or_else(|| "no ext4 magic number".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_superblock() -> Vec<u8> {
        let mut raw = vec![0u8; SUPERBLOCK_LEN];
        raw[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        raw[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // 4096
        raw[0x20..0x24].copy_from_slice(&32768u32.to_le_bytes());
        raw[0x60..0x64].copy_from_slice(&(0x0040u32 | 0x0200).to_le_bytes());
        raw[0x68..0x78].copy_from_slice(&[0xab; 16]);
        raw[0x174] = 4;
        raw
    }

    #[test]
    fn parses_layout_and_features() {
        let sb = Superblock::parse(&raw_superblock()).expect("valid superblock");
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.blocks_per_group, 32768);
        assert_eq!(sb.groups_per_flex, Some(16));
        assert!(sb.has_extents && !sb.bigalloc && !sb.inline_data);
        assert_eq!(sb.uuid.to_string(), "abababab-abab-abab-abab-abababababab");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Superblock::parse(&[0u8; 1024]), None);
        assert_eq!(Superblock::parse(&[0u8; 10]), None);
        let mut raw = raw_superblock();
        raw[0x18..0x1C].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(Superblock::parse(&raw), None);
    }

    #[test]
    fn bigalloc_is_read_from_ro_compat() {
        let mut raw = raw_superblock();
        raw[0x64..0x68].copy_from_slice(&0x0200u32.to_le_bytes());
        assert!(Superblock::parse(&raw).expect("valid").bigalloc);
    }
}
