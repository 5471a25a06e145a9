//! btrfs judges and tools from btrfs-progs: subvolumes and read-only
//! snapshots, what `btrfs filesystem du` counts as exclusive and shared,
//! and `btrfs filesystem defragment` as the peer defragmenter, timed.
//! Extents: `filefrag` (FIEMAP) works on btrfs as on ext4.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use super::cmd::{sh, timed_tool, ToolRun};

/// `btrfs subvolume create PATH`.
pub fn btrfs_subvolume(path: &Path) {
    sh(
        "btrfs",
        [
            OsStr::new("subvolume"),
            OsStr::new("create"),
            path.as_os_str(),
        ],
    );
}

/// `btrfs subvolume snapshot -r SRC DST`: a read-only snapshot sharing
/// every extent of SRC, so that what a defragmenter unshares shows as
/// exclusive bytes (`btrfs_du`). Lives inside the image; goes with it.
pub fn btrfs_snapshot_ro(src: &Path, dst: &Path) {
    sh(
        "btrfs",
        [
            OsStr::new("subvolume"),
            OsStr::new("snapshot"),
            OsStr::new("-r"),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
}

/// `btrfs filesystem sync PATH`: commits the filesystem's transaction, so
/// that `btrfs filesystem du` counts what was just written.
pub fn btrfs_filesystem_sync(path: &Path) {
    sh(
        "btrfs",
        [
            OsStr::new("filesystem"),
            OsStr::new("sync"),
            path.as_os_str(),
        ],
    );
}

/// One line of `btrfs filesystem du --raw`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtrfsDu {
    /// Bytes referenced.
    pub total: u64,
    /// Bytes referenced by nothing else (no snapshot, no reflink).
    pub exclusive: u64,
    /// Bytes shared with something outside (-s: outside the set).
    pub set_shared: u64,
}

/// `btrfs filesystem du -s --raw PATH`: the summary for a file or a whole
/// tree (a subvolume, say).
pub fn btrfs_du(path: &Path) -> BtrfsDu {
    let out = sh(
        "btrfs",
        [
            OsStr::new("filesystem"),
            OsStr::new("du"),
            OsStr::new("-s"),
            OsStr::new("--raw"),
            path.as_os_str(),
        ],
    );
    parse_du(&out).unwrap_or_else(|| {
        panic!(
            "cannot parse `btrfs filesystem du -s --raw {}`:\n{out}",
            path.display()
        )
    })
}

/// Parses the last line of `btrfs filesystem du -s --raw`:
///   "     Total   Exclusive  Set shared  Filename"
///   "   1048576           0     1048576  m/data"
pub fn parse_du(out: &str) -> Option<BtrfsDu> {
    let line = out.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut f = line.split_whitespace().map(str::parse::<u64>);
    Some(BtrfsDu {
        total: f.next()?.ok()?,
        exclusive: f.next()?.ok()?,
        set_shared: f.next()?.ok()?,
    })
}

/// `btrfs filesystem defragment -f PATH` (`-r` for a directory), timed,
/// with the tool's defaults (target extent 32 MiB; no compression). `-f`
/// flushes each file before going on: without it the command returns in
/// milliseconds and the rewrite happens at writeback, after the timing and
/// before nothing in particular. It unshares what it rewrites from
/// snapshots and reflinks.
pub fn btrfs_defragment(path: &Path) -> ToolRun {
    let mut cmd = Command::new("btrfs");
    cmd.args(["filesystem", "defragment", "-f"]);
    if path.is_dir() {
        cmd.arg("-r");
    }
    timed_tool(cmd.arg(path))
}
