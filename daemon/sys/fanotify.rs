//! fanotify in file-identifier mode (`FAN_REPORT_FID`): one mark covers a
//! whole filesystem (`FAN_MARK_FILESYSTEM`), and each event names the file
//! by (filesystem id, file handle) instead of an open fd, so reading
//! events opens nothing and holds nothing on the filesystem.
//!
//! nix's wrapper reads only the legacy fd-per-event format, and the one
//! crate that parses FID records is young and single-authored; what is
//! needed here (init, mark, and a bounds-checked parse of two record
//! kinds) is small enough to own.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;

use super::handle::FileHandle;

/// A filesystem as statfs(2) and fanotify name it (`f_fsid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsId(pub [i32; 2]);

/// One event read from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file was modified, or closed after being opened for writing, by
    /// process `pid`.
    Written {
        fs: FsId,
        handle: FileHandle,
        pid: i32,
    },
    /// The kernel's queue overflowed: events were lost.
    Overflow,
}

/// Why a group or a mark could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FanotifyError {
    #[error(
        "fanotify needs CAP_SYS_ADMIN (EPERM); without it, written files are found through \
         inotify on the `watch` trees and by the crawl"
    )]
    NoPermission,
    #[error("this kernel has no fanotify with file identifiers (needs Linux 5.1 or later)")]
    Unsupported,
    #[error(
        "this filesystem cannot report file identifiers to fanotify ({0}); written files \
         there are found through inotify on the `watch` trees and by the crawl"
    )]
    FilesystemUnsupported(Errno),
    #[error("the kernel's limit of fanotify groups or marks is reached ({0})")]
    Limit(Errno),
    #[error("{call} failed: {errno}")]
    Other { call: &'static str, errno: Errno },
}

/// What is watched: data written, whoever writes it.
const WRITE_EVENTS: u64 = libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE;
/// The layout this parser knows (`FANOTIFY_METADATA_VERSION`).
const METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
const METADATA_LEN: usize = 24;
/// `struct fanotify_event_info_header` + fsid + `struct file_handle`'s head.
const FID_HEAD_LEN: usize = 4 + 8 + 8;

/// A fanotify group in file-identifier mode, non-blocking.
#[derive(Debug)]
pub struct Fanotify {
    fd: OwnedFd,
}

impl AsFd for Fanotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Fanotify {
    pub fn init() -> Result<Self, FanotifyError> {
        let flags =
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_FID;
        let event_flags =
            u32::try_from(libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC).unwrap_or(0);
        // SAFETY: plain integer arguments.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(match Errno::last() {
                Errno::EPERM => FanotifyError::NoPermission,
                Errno::EINVAL | Errno::ENOSYS => FanotifyError::Unsupported,
                e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM) => FanotifyError::Limit(e),
                errno => FanotifyError::Other {
                    call: "fanotify_init",
                    errno,
                },
            });
        }
        // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
        Ok(Fanotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches every file of the filesystem that `on` (its root, opened
    /// without following anything) belongs to.
    pub fn mark_filesystem(&self, on: BorrowedFd<'_>) -> Result<(), FanotifyError> {
        self.mark(libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, on)
    }

    /// Stops watching it (where it is still mounted; an unmount removes
    /// the mark by itself).
    pub fn unmark_filesystem(&self, on: BorrowedFd<'_>) -> Result<(), FanotifyError> {
        self.mark(libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM, on)
    }

    fn mark(&self, flags: u32, on: BorrowedFd<'_>) -> Result<(), FanotifyError> {
        // SAFETY: a NULL path makes the kernel mark the object `on` refers
        // to; no memory is passed.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                flags,
                WRITE_EVENTS,
                on.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        Err(match Errno::last() {
            Errno::EPERM => FanotifyError::NoPermission,
            e @ (Errno::ENODEV | Errno::EOPNOTSUPP | Errno::EXDEV) => {
                FanotifyError::FilesystemUnsupported(e)
            }
            e @ Errno::ENOSPC => FanotifyError::Limit(e),
            errno => FanotifyError::Other {
                call: "fanotify_mark",
                errno,
            },
        })
    }

    /// Reads what is queued into `buf` and parses it; an empty list when
    /// nothing is (the group is non-blocking).
    pub fn read(&self, buf: &mut [u8]) -> Result<Vec<Event>, Errno> {
        match nix::unistd::read(&self.fd, buf) {
            Ok(n) => Ok(parse(&buf[..n])),
            Err(Errno::EAGAIN) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(buf: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// Parses a buffer of events as read(2) returned it. Every length is
/// checked against the buffer; a record that does not fit ends the parse
/// (the kernel never splits one, so that is only ever garbage), and
/// records of kinds not asked for are passed over.
pub fn parse(buf: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut at = 0usize;
    while let (Some(event_len), Some(vers), Some(meta_len)) =
        (u32_at(buf, at), buf.get(at + 4), u16_at(buf, at + 6))
    {
        let (event_len, meta_len) = (event_len as usize, usize::from(meta_len));
        if *vers != METADATA_VERSION
            || event_len < METADATA_LEN
            || meta_len < METADATA_LEN
            || meta_len > event_len
            || at + event_len > buf.len()
        {
            break;
        }
        let record = &buf[at..at + event_len];
        at += event_len;
        let (Some(mask), Some(pid)) = (u64_at(record, 8), i32_at(record, 20)) else {
            break;
        };
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            events.push(Event::Overflow);
            continue;
        }
        if mask & WRITE_EVENTS == 0 {
            continue;
        }
        if let Some((fs, handle)) = first_fid(&record[meta_len..]) {
            events.push(Event::Written { fs, handle, pid });
        }
    }
    events
}

/// The first file-identifier record among an event's info records.
fn first_fid(mut info: &[u8]) -> Option<(FsId, FileHandle)> {
    while let (Some(&kind), Some(len)) = (info.first(), u16_at(info, 2)) {
        let len = usize::from(len);
        if len < 4 || len > info.len() {
            return None;
        }
        let record = &info[..len];
        info = &info[len..];
        if kind != libc::FAN_EVENT_INFO_TYPE_FID || len < FID_HEAD_LEN {
            continue;
        }
        let fs = FsId([i32_at(record, 4)?, i32_at(record, 8)?]);
        let handle_len = u32_at(record, 12)? as usize;
        let handle_type = i32_at(record, 16)?;
        let bytes = record.get(FID_HEAD_LEN..FID_HEAD_LEN.checked_add(handle_len)?)?;
        if bytes.is_empty() {
            return None;
        }
        return Some((
            fs,
            FileHandle {
                handle_type,
                bytes: bytes.into(),
            },
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event as the kernel lays it out.
    fn event(mask: u64, pid: i32, fid: Option<(FsId, i32, &[u8])>) -> Vec<u8> {
        let mut info = Vec::new();
        if let Some((fs, handle_type, bytes)) = fid {
            let len = FID_HEAD_LEN + bytes.len();
            info.push(libc::FAN_EVENT_INFO_TYPE_FID);
            info.push(0);
            info.extend_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
            info.extend_from_slice(&fs.0[0].to_ne_bytes());
            info.extend_from_slice(&fs.0[1].to_ne_bytes());
            info.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_ne_bytes());
            info.extend_from_slice(&handle_type.to_ne_bytes());
            info.extend_from_slice(bytes);
        }
        let len = METADATA_LEN + info.len();
        let mut e = Vec::new();
        e.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        e.push(METADATA_VERSION);
        e.push(0);
        e.extend_from_slice(&u16::try_from(METADATA_LEN).unwrap().to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&(-1i32).to_ne_bytes());
        e.extend_from_slice(&pid.to_ne_bytes());
        e.extend_from_slice(&info);
        e
    }

    const FS: FsId = FsId([7, -3]);

    #[test]
    fn a_write_names_its_filesystem_handle_and_writer() {
        let mut buf = event(
            libc::FAN_MODIFY,
            42,
            Some((FS, 1, &[1, 2, 3, 4, 5, 6, 7, 8])),
        );
        buf.extend(event(libc::FAN_CLOSE_WRITE, 43, Some((FS, 1, &[9; 8]))));
        let events = parse(&buf);
        assert_eq!(
            events,
            vec![
                Event::Written {
                    fs: FS,
                    handle: FileHandle {
                        handle_type: 1,
                        bytes: vec![1, 2, 3, 4, 5, 6, 7, 8].into()
                    },
                    pid: 42
                },
                Event::Written {
                    fs: FS,
                    handle: FileHandle {
                        handle_type: 1,
                        bytes: vec![9; 8].into()
                    },
                    pid: 43
                },
            ]
        );
    }

    #[test]
    fn an_overflow_is_reported() {
        let buf = event(libc::FAN_Q_OVERFLOW, -1, None);
        assert_eq!(parse(&buf), vec![Event::Overflow]);
    }

    #[test]
    fn a_truncated_or_garbled_buffer_ends_the_parse_without_panicking() {
        let good = event(libc::FAN_MODIFY, 1, Some((FS, 1, &[1; 8])));
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_empty(), "cut at {cut}");
        }
        // A handle length past the record's end.
        let mut bad = good.clone();
        bad[METADATA_LEN + 12] = 200;
        assert!(parse(&bad).is_empty());
        // Another metadata version.
        let mut other = good.clone();
        other[4] = 2;
        assert!(parse(&other).is_empty());
        // Every byte flipped in turn: never a panic.
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0xff;
            let _ = parse(&flipped);
        }
    }

    #[test]
    fn events_without_a_file_identifier_are_passed_over() {
        let mut buf = event(libc::FAN_MODIFY, 1, None);
        buf.extend(event(libc::FAN_MODIFY, 2, Some((FS, 1, &[3; 8]))));
        assert_eq!(parse(&buf).len(), 1);
    }
}
