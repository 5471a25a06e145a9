//! What only ext4 tells of a filesystem: its layout (the superblock, read
//! from the block device; where the device cannot be read, what the kernel
//! tells of it, see `layout`) and the mount options only ext4 has. The
//! generic facts (`crate::filesystem::FsInfo`) are filled from them by the
//! ext4 backend's probe.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::fstatfs;

use super::layout::{self, Guess};
use crate::filesystem::{majmin, FsUuid, Mount};
use crate::sys::error::Error;

/// ext4's statfs magic number (ext2 and ext3 share it).
pub const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;

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

/// ext4's own facts of a filesystem, which only its backend reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Detail {
    pub superblock: Superblock,
    /// Where `superblock` came from.
    pub layout: Layout,
    /// Mounted with data=journal.
    pub data_journal: bool,
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

impl Ext4Detail {
    /// Reads ext4's facts of the filesystem `fd` lives on, mounted as
    /// `mount` says; with the block device they were read from.
    pub fn probe(fd: BorrowedFd<'_>, mount: &Mount) -> Result<(PathBuf, Ext4Detail), Error> {
        let (device, superblock, layout) = match read_superblock(mount.source.as_deref(), mount.dev)
        {
            Ok((device, superblock)) => (device, superblock, Layout::Superblock),
            Err(unreadable) => {
                let statfs = fstatfs(fd).map_err(|errno| Error::of("fstatfs", errno))?;
                let (superblock, guessed) = layout::from_kernel(fd, &statfs);
                let device = PathBuf::from(mount.source.clone().unwrap_or_default());
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
        let detail = Ext4Detail {
            superblock,
            layout,
            data_journal: mount.has_option("data", Some("journal")),
        };
        Ok((device, detail))
    }

    /// Whether the layout came from the kernel, the device being unreadable.
    pub fn layout_from_kernel(&self) -> bool {
        matches!(self.layout, Layout::Kernel { .. })
    }

    /// Blocks per flex group (per block group without flex_bg).
    pub fn group_blocks(&self) -> u64 {
        let sb = &self.superblock;
        u64::from(sb.blocks_per_group) * u64::from(sb.groups_per_flex.unwrap_or(1))
    }

    /// What an operator should hear, once per filesystem, when the layout
    /// is not the superblock's: what could not be read and what that
    /// changes. None when the superblock was read.
    pub fn layout_note(&self, mount_point: &Path) -> Option<String> {
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
            crate::escape::escaped(mount_point)
        ))
    }
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
