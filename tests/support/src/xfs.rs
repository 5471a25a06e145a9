//! XFS judges and tools from xfsprogs: the layout by `xfs_bmap -v`, a
//! power cut by `xfs_io -x -c shutdown`, and `xfs_fsr` as the peer
//! defragmenter, timed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use super::cmd::{sh, timed_tool, ToolRun};
use super::faults::ShutdownFlag;

/// One data extent as `xfs_bmap -vp` lists it, in 512-byte units (what
/// xfs_bmap prints, whatever the block size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BmapExtent {
    /// First 512-byte unit of the file the extent holds.
    pub file_offset: u64,
    /// First 512-byte unit on the device.
    pub block: u64,
    pub len: u64,
    /// The allocation group it lies in.
    pub ag: u64,
    /// Preallocated, never written (FLAGS bit 010000): reads as zeroes.
    pub unwritten: bool,
}

/// The data extents of PATH from `xfs_bmap -vp`, holes left out.
pub fn xfs_bmap(path: &Path) -> Vec<BmapExtent> {
    let out = sh("xfs_bmap", [OsStr::new("-vp"), path.as_os_str()]);
    parse_bmap(&out).unwrap_or_else(|line| {
        panic!(
            "cannot parse xfs_bmap -vp line {line:?} for {}; output:\n{out}",
            path.display()
        )
    })
}

/// Parses `xfs_bmap -vp` output; Err(line) names a line it cannot read.
///   "   0: [0..255]:        192..447          0 (192..447)         256 000000"
///   "   1: [256..383]:      hole                                   128"
pub fn parse_bmap(out: &str) -> Result<Vec<BmapExtent>, String> {
    let range = |f: &str| -> Option<(u64, u64)> {
        let f = f.trim_matches(|c| c == '[' || c == ']' || c == ':' || c == '(' || c == ')');
        let (a, b) = f.split_once("..")?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let mut v = Vec::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Data rows start "N:"; the file name and the header do not.
        let is_row = fields
            .first()
            .and_then(|f| f.strip_suffix(':'))
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if !is_row {
            continue;
        }
        if fields.get(2) == Some(&"hole") {
            continue;
        }
        let parsed = (|| {
            let (f0, _) = range(fields.get(1)?)?;
            let (b0, b1) = range(fields.get(2)?)?;
            let ag = fields.get(3)?.parse().ok()?;
            let flags = fields.get(6).copied().unwrap_or("0");
            Some(BmapExtent {
                file_offset: f0,
                block: b0,
                len: b1 - b0 + 1,
                ag,
                // Octal flag digits: 010000 is BMV_OF_PREALLOC.
                unwritten: u32::from_str_radix(flags, 8).is_ok_and(|x| x & 0o10000 != 0),
            })
        })();
        match parsed {
            Some(e) => v.push(e),
            None => return Err(line.to_string()),
        }
    }
    Ok(v)
}

/// The number of data extents of PATH by `xfs_bmap -v` (holes not
/// counted; extents next to each other on disk each count, as XFS keeps
/// them as separate records).
pub fn xfs_bmap_extents(path: &Path) -> u64 {
    xfs_bmap(path).len() as u64
}

/// Shuts the XFS filesystem mounted on `mount_point` down with
/// `xfs_io -x -c 'shutdown [-f]'`: LogFlush (`-f`) writes the log out
/// first, NoLogFlush loses whatever was not committed, like a power cut.
/// Every I/O then fails with EIO until it is unmounted; the next mount
/// replays the log (`LoopImage::replay_and_fsck`, `replay_journal`).
pub fn xfs_shutdown(mount_point: &Path, flag: ShutdownFlag) {
    let command = match flag {
        ShutdownFlag::LogFlush => "shutdown -f",
        ShutdownFlag::NoLogFlush => "shutdown",
    };
    sh(
        "xfs_io",
        [
            OsStr::new("-x"),
            OsStr::new("-c"),
            OsStr::new(command),
            mount_point.as_os_str(),
        ],
    );
}

/// `xfs_io -x -c 'resblks N'`: sets the blocks XFS keeps back from users
/// (statfs does not count them as free; by default 5% of the filesystem
/// or 8,192 blocks, whichever is smaller) until the next mount. A
/// fragmenter filling an XFS image to ENOSPC leaves that much contiguous
/// free space behind, where the file under test then lands whole; with 0
/// the fill takes it too.
pub fn xfs_resblks(mount_point: &Path, blocks: u64) {
    sh(
        "xfs_io",
        [
            OsStr::new("-x"),
            OsStr::new("-c"),
            OsStr::new(&format!("resblks {blocks}")),
            mount_point.as_os_str(),
        ],
    );
}

/// `xfs_fsr -v FILE`, timed. xfs_fsr exits 0 also when it left the file
/// as it was; judge by the extents after. What -v says ("extents
/// before:N after:M", or why not) goes to syslog, not stdout, when stdin
/// is not a terminal (as here: xfs_fsr sets its -g then), so `stdout` is
/// usually empty.
pub fn xfs_fsr(path: &Path) -> ToolRun {
    timed_tool(Command::new("xfs_fsr").arg("-v").arg(path))
}
