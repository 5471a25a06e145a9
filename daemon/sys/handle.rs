//! File handles: a file's identity on its filesystem that no rename, link
//! or symlink can redirect. fanotify reports them; `open_by_handle_at`
//! reaches exactly that inode again, or fails if it is gone.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;

use super::fanotify::FsId;

/// An opaque handle as the filesystem encodes it (`struct file_handle`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Box<[u8]>,
}

/// Why a handle could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The file was deleted since the handle was taken (ESTALE).
    #[error("the file no longer exists")]
    Gone,
    #[error(
        "opening files by handle needs CAP_DAC_READ_SEARCH (EPERM); give the service that \
         capability (see systemd/defragd.service)"
    )]
    NoPermission,
    #[error("open_by_handle_at failed: {0}")]
    Other(Errno),
}

/// Opens the file `handle` names, on the filesystem that `mount` (any fd
/// on it, such as its root) is on. `flags` as for open(2); O_CLOEXEC is
/// always added.
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: i32,
) -> Result<OwnedFd, HandleError> {
    let header = std::mem::size_of::<libc::file_handle>();
    let handle_bytes = u32::try_from(handle.bytes.len()).map_err(|_| HandleError::Gone)?;
    // A u32 buffer: struct file_handle needs 4-byte alignment.
    let mut buf = vec![0u32; (header + handle.bytes.len()).div_ceil(4)];
    let raw = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds at least `header + bytes.len()` bytes, is 4-byte
    // aligned, and outlives these writes; the header fields are written at
    // their offsets in struct file_handle (u32, then i32, then the bytes).
    unsafe {
        std::ptr::copy_nonoverlapping(handle_bytes.to_ne_bytes().as_ptr(), raw, 4);
        std::ptr::copy_nonoverlapping(handle.handle_type.to_ne_bytes().as_ptr(), raw.add(4), 4);
        std::ptr::copy_nonoverlapping(handle.bytes.as_ptr(), raw.add(header), handle.bytes.len());
    }
    // SAFETY: `buf` is a valid struct file_handle of `handle_bytes` bytes
    // for the duration of the call; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            raw.cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(match Errno::last() {
            Errno::ESTALE | Errno::ENOENT => HandleError::Gone,
            Errno::EPERM => HandleError::NoPermission,
            other => HandleError::Other(other),
        });
    }
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The filesystem id statfs(2) gives for `fd`: what fanotify names a
/// filesystem by in its events.
pub fn fs_id(fd: BorrowedFd<'_>) -> Result<FsId, Errno> {
    // SAFETY: statfs is plain integers; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable and outlives the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Errno::last());
    }
    // SAFETY: fsid_t is two C ints (its field is private in libc); the
    // sizes are equal, checked at compile time by transmute.
    let val: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(FsId(val))
}
