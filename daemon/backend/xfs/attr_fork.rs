//! Shaping the donor's inode like the file's. SWAPEXT swaps data forks
//! only, and without the rmap btree it refuses (EINVAL, "format is
//! incompatible") when a fork would not fit the other inode: a file whose
//! attribute fork leaves its data fork 12 extents of room (most files here
//! get an empty attribute fork at creation), in btree form with 16
//! extents, cannot take a donor's data fork with room for 21, where 16
//! extents would have to be inline. xfs_fsr's answer, and this one: give
//! the donor an attribute fork that begins where the file's does.
//!
//! XFS places a new attribute fork so that the first attribute just fits
//! (within bounds): one attribute of the right size on the empty donor
//! puts its fork offset where the file's is. The attribute goes with the
//! donor when it is freed; the file's own attributes are never touched.

use std::ffi::CString;
use std::os::fd::BorrowedFd;

use crate::sys;
use crate::xfs::{self, Geometry};

/// Bytes of a short-form attribute fork holding one attribute, beyond its
/// name and value: the header (4) and the entry's (3).
const SF_OVERHEAD: u32 = 4 + 3;
/// Longest attribute name or value XFS keeps in short form.
const SF_MAX_FIELD: u32 = 255;

/// The name and value lengths of the one attribute that makes a fork of
/// `fork_bytes` (the literal area less the wanted attribute fork offset);
/// None when no single short-form attribute fills it.
fn attribute_for(fork_bytes: u32) -> Option<(u32, u32)> {
    let payload = fork_bytes.checked_sub(SF_OVERHEAD)?;
    let name = payload.saturating_sub(SF_MAX_FIELD).max(1);
    let value = payload.checked_sub(name)?;
    (name <= SF_MAX_FIELD && value <= SF_MAX_FIELD).then_some((name, value))
}

/// Gives the empty `donor` an attribute fork at the file's offset, when
/// the file has one and the filesystem checks fork formats (no rmapbt).
/// Best effort: where it cannot, the swap may refuse with a clear error,
/// and nothing is lost.
pub(super) fn match_file(
    donor: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    geometry: &Geometry,
) -> sys::Result<()> {
    if geometry.rmapbt {
        return Ok(());
    }
    let file_forks = xfs::forks(file, sys::stat(file)?.st_ino)?;
    let donor_ino = sys::stat(donor)?.st_ino;
    let donor_forks = xfs::forks(donor, donor_ino)?;
    if file_forks.attr_offset == donor_forks.attr_offset || file_forks.attr_offset == 0 {
        return Ok(());
    }
    let fork_bytes = geometry
        .literal_area()
        .saturating_sub(file_forks.attr_offset);
    let Some((name_len, value_len)) = attribute_for(fork_bytes) else {
        tracing::debug!("no one attribute makes an attribute fork of {fork_bytes} bytes");
        return Ok(());
    };
    let name = CString::new(format!("trusted.{}", "d".repeat(name_len as usize)))
        .map_err(|_| sys::Error::of("fsetxattr", nix::errno::Errno::EINVAL))?;
    sys::set_xattr(donor, &name, &vec![0u8; value_len as usize])?;
    let now = xfs::forks(donor, donor_ino)?;
    if now.attr_offset != file_forks.attr_offset {
        tracing::debug!(
            "the donor's attribute fork begins at {}, the file's at {}: the swap may refuse",
            now.attr_offset,
            file_forks.attr_offset
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_attribute_fills_the_fork_exactly() {
        // A 512-byte v3 inode (336 bytes of literal area), the file's
        // attribute fork at 192: 144 bytes of attribute fork.
        let (name, value) = attribute_for(336 - 192).expect("fits");
        assert_eq!(SF_OVERHEAD + name + value, 144);
        let (name, value) = attribute_for(300).expect("fits");
        assert!(name <= SF_MAX_FIELD && value <= SF_MAX_FIELD);
        assert_eq!(SF_OVERHEAD + name + value, 300);
        assert_eq!(attribute_for(5), None);
        assert_eq!(attribute_for(2000), None);
    }
}
