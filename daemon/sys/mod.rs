//! Generic syscalls that no single filesystem owns, behind safe, typed
//! wrappers: fanotify in file-identifier mode and opening a file by its
//! handle. Like the ext4 module, this decides nothing; every errno is
//! mapped to an error that says what it means.

pub mod fanotify;
pub mod handle;

pub use fanotify::{Event, Fanotify, FanotifyError, FsId};
pub use handle::{fs_id, open_by_handle, FileHandle, HandleError};
