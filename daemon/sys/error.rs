//! Typed errors for everything the kernel can say about ext4 calls.
//!
//! Each variant is something an operator can act on; its message says what
//! happened and what to do. Nothing above the `ext4` module sees an errno.

use nix::errno::Errno;

/// An error from an ext4 ioctl or syscall, mapped from its errno.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("the file is not open for writing (EBADF): defragmenting needs read-write access")]
    NotOpenForWrite,
    #[error(
        "the kernel rejected the move as invalid (EINVAL): the file and the donor are on \
         different filesystems, one is not a regular file, the file is empty, or the range \
         lies past the end of the file (did it shrink?)"
    )]
    InvalidMove,
    #[error(
        "the kernel cannot move this file's blocks (EOPNOTSUPP): the file is block-mapped, \
         has inline data or is encrypted, or the filesystem uses data=journal, bigalloc or DAX"
    )]
    MoveNotSupported,
    #[error(
        "the file is an active swap file (ETXTBSY): run swapoff first if it must be defragmented"
    )]
    Swapfile,
    #[error("the file is being executed or is an active swap file (ETXTBSY): try again when it is not in use")]
    TextBusy,
    #[error("the file or the donor is immutable or append-only (EPERM): see lsattr; clear the flag with chattr to defragment it")]
    Immutable,
    #[error("the range holds no data (ENODATA): the file was truncated or had a hole punched while it was being moved; nothing is lost")]
    NoData,
    #[error("the file's pages are busy (EBUSY): another process holds them locked or under writeback; try again later")]
    Busy,
    #[error("the filesystem is full (ENOSPC): free some space, or lower the amount defragmented at once")]
    NoSpace,
    #[error("the filesystem is read-only (EROFS): remount it read-write to defragment it")]
    ReadOnly,
    #[error("I/O error (EIO): the disk failed or the filesystem was shut down; check `dmesg` and run `e2fsck` at the next maintenance window")]
    Io,
    #[error("the kernel cannot convert this file to extents (EINVAL): the filesystem lacks the extent feature, or the file has inline data")]
    CannotConvert,
    #[error("the file is open for writing by another process; it is converted only when nobody writes it")]
    OpenForWriting,
    #[error("a symbolic link is in the way (ELOOP): defragd never follows symlinks")]
    Symlink,
    #[error("the path crosses into another mount (EXDEV): defragd stays on one filesystem")]
    CrossesMount,
    #[error("no such file (ENOENT): it was deleted or renamed")]
    NotFound,
    #[error("permission denied (EACCES/EPERM) for {op}: defragd must run as root")]
    PermissionDenied { op: &'static str },
    #[error(
        "{op} is not supported here ({errno}): this filesystem does not support it or the kernel is too old"
    )]
    NotSupported { op: &'static str, errno: Errno },
    #[error("{op} failed: {errno}")]
    Other { op: &'static str, errno: Errno },
}

/// Which call failed, so that an errno can be read in its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    MoveExt,
    Other(&'static str),
}

impl Error {
    /// Maps an errno from `call` to what it means for that call.
    pub fn from_errno(call: Call, errno: Errno) -> Self {
        match (call, errno) {
            (Call::MoveExt, Errno::EBADF) => Error::NotOpenForWrite,
            (Call::MoveExt, Errno::EINVAL) => Error::InvalidMove,
            (Call::MoveExt, Errno::EOPNOTSUPP) => Error::MoveNotSupported,
            (Call::MoveExt, Errno::ETXTBSY) => Error::Swapfile,
            (Call::MoveExt, Errno::EPERM) => Error::Immutable,
            (_, Errno::ETXTBSY) => Error::TextBusy,
            (_, Errno::ENODATA) => Error::NoData,
            (_, Errno::EBUSY) => Error::Busy,
            (_, Errno::ENOSPC) | (_, Errno::EDQUOT) => Error::NoSpace,
            (_, Errno::EROFS) => Error::ReadOnly,
            (_, Errno::EIO) => Error::Io,
            (_, Errno::ELOOP) => Error::Symlink,
            (_, Errno::EXDEV) => Error::CrossesMount,
            (_, Errno::ENOENT) => Error::NotFound,
            (Call::Other(op), Errno::EACCES) | (Call::Other(op), Errno::EPERM) => {
                Error::PermissionDenied { op }
            }
            (Call::Other(op), Errno::EOPNOTSUPP) | (Call::Other(op), Errno::ENOTTY) => {
                Error::NotSupported { op, errno }
            }
            (Call::MoveExt, errno) => Error::Other {
                op: "EXT4_IOC_MOVE_EXT",
                errno,
            },
            (Call::Other(op), errno) => Error::Other { op, errno },
        }
    }

    /// Shorthand for a call other than MOVE_EXT.
    pub fn of(op: &'static str, errno: Errno) -> Self {
        Self::from_errno(Call::Other(op), errno)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A byte offset or length as the kernel's signed off_t, for call `op`.
pub fn off_t(op: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::of(op, Errno::EFBIG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_ext_errnos_have_their_own_meaning() {
        let m = |e| Error::from_errno(Call::MoveExt, e);
        assert_eq!(m(Errno::EBADF), Error::NotOpenForWrite);
        assert_eq!(m(Errno::EINVAL), Error::InvalidMove);
        assert_eq!(m(Errno::EOPNOTSUPP), Error::MoveNotSupported);
        assert_eq!(m(Errno::ETXTBSY), Error::Swapfile);
        assert_eq!(m(Errno::EPERM), Error::Immutable);
        assert_eq!(m(Errno::ENODATA), Error::NoData);
        assert_eq!(m(Errno::EBUSY), Error::Busy);
        assert_eq!(m(Errno::ENOSPC), Error::NoSpace);
        assert_eq!(m(Errno::EROFS), Error::ReadOnly);
        assert_eq!(m(Errno::EIO), Error::Io);
        assert!(matches!(m(Errno::EFAULT), Error::Other { .. }));
    }

    #[test]
    fn other_calls_read_errnos_in_context() {
        assert_eq!(
            Error::of("open", Errno::EPERM),
            Error::PermissionDenied { op: "open" }
        );
        assert_eq!(Error::of("open", Errno::ETXTBSY), Error::TextBusy);
        assert!(matches!(
            Error::of("FIEMAP", Errno::EOPNOTSUPP),
            Error::NotSupported { .. }
        ));
    }

    #[test]
    fn every_message_says_what_to_do_or_why() {
        let all = [
            Error::NotOpenForWrite,
            Error::InvalidMove,
            Error::MoveNotSupported,
            Error::Swapfile,
            Error::Immutable,
            Error::NoData,
            Error::Busy,
            Error::NoSpace,
            Error::ReadOnly,
            Error::Io,
        ];
        for e in all {
            assert!(e.to_string().contains(':'), "{e} lacks an explanation");
        }
    }
}
