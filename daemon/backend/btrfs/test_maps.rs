//! What the btrfs backend's tests write FIEMAP maps with.

use crate::sys::{Extent, ExtentFlags};

pub const K: u64 = 1024;

pub const PLAIN: ExtentFlags = ExtentFlags::empty();

/// One extent as FIEMAP gives it, in bytes: where in the file, where on
/// the disk, how long.
pub fn ext(logical: u64, physical: u64, length: u64, flags: ExtentFlags) -> Extent {
    Extent {
        logical,
        physical,
        length,
        flags,
    }
}
