//! The page cache around a move: what was resident before (mincore), hints
//! to read ahead, write back and drop (fadvise, sync_file_range). A
//! maintenance job must leave the cache as it found it.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::error::{off_t, Error, Result};

/// The size of a page of the cache.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// Which pages of a byte range were in the page cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    /// Byte offset of the first page (page-aligned).
    pub start: u64,
    pub page_size: u64,
    /// One entry per page: was it resident?
    pub resident: Vec<bool>,
}

impl Residency {
    /// The byte ranges of pages that were not resident: what to drop after
    /// the move so that the cache is as it was.
    pub fn absent_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges_where(false)
    }

    /// The byte ranges of pages that were resident.
    pub fn resident_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges_where(true)
    }

    fn ranges_where(&self, resident: bool) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (index, _) in self
            .resident
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == resident)
        {
            let offset = self.start + index as u64 * self.page_size;
            match ranges.last_mut() {
                Some((start, len)) if *start + *len == offset => *len += self.page_size,
                _ => ranges.push((offset, self.page_size)),
            }
        }
        ranges
    }

    /// Was the page holding byte `offset` resident? None when outside.
    pub fn at(&self, offset: u64) -> Option<bool> {
        let index = offset.checked_sub(self.start)? / self.page_size;
        self.resident.get(usize::try_from(index).ok()?).copied()
    }

    /// The first byte past the pages described.
    pub fn end(&self) -> u64 {
        self.start + self.resident.len() as u64 * self.page_size
    }

    pub fn resident_pages(&self) -> usize {
        self.resident.iter().filter(|r| **r).count()
    }
}

/// Aligns a byte range outward to whole pages.
fn page_span(offset: u64, len: u64, page: u64) -> (u64, u64) {
    let start = offset / page * page;
    let end = (offset + len).div_ceil(page) * page;
    (start, end - start)
}

/// Which pages of `offset..offset+len` are resident. Maps the range without
/// touching it: mincore reads the cache state and faults nothing in.
pub fn residency(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<Residency> {
    let page = page_size();
    let (start, span) = page_span(offset, len, page);
    let pages = (span / page) as usize;
    let Some(map_len) = NonZeroUsize::new(span as usize) else {
        return Ok(Residency {
            start,
            page_size: page,
            resident: Vec::new(),
        });
    };
    let file_offset = i64::try_from(start).map_err(|_| Error::of("mmap", Errno::EFBIG))?;
    // SAFETY: a fresh read-only shared mapping that nothing else aliases;
    // it is only passed to mincore and unmapped below, never dereferenced.
    let addr = unsafe {
        mmap(
            None,
            map_len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            fd,
            file_offset,
        )
    }
    .map_err(|errno| Error::of("mmap", errno))?;
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `span` bytes and `vec` has one byte per page.
    let rc = unsafe { nix::libc::mincore(addr.as_ptr(), span as usize, vec.as_mut_ptr()) };
    let mincore_result = Errno::result(rc);
    // SAFETY: unmapping exactly the mapping created above.
    let unmap_result = unsafe { munmap(addr, span as usize) };
    mincore_result.map_err(|errno| Error::of("mincore", errno))?;
    unmap_result.map_err(|errno| Error::of("munmap", errno))?;
    Ok(Residency {
        start,
        page_size: page,
        resident: vec.iter().map(|b| b & 1 == 1).collect(),
    })
}

fn advise(fd: BorrowedFd<'_>, offset: u64, len: u64, advice: PosixFadviseAdvice) -> Result<()> {
    let to_off = |v: u64| off_t("posix_fadvise", v);
    posix_fadvise(fd, to_off(offset)?, to_off(len)?, advice)
        .map_err(|errno| Error::of("posix_fadvise", errno))
}

/// Starts reading the range into the cache in the background, so that a
/// following MOVE_EXT finds its pages there instead of reading them one by one.
pub fn read_ahead(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    advise(fd, offset, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED)
}

/// Reads the range through the cache and waits for it: unlike
/// `read_ahead`, whose pages are allocated without retrying and so go
/// missing when memory is short, a read always leaves them resident.
pub fn read_into_cache(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let want = usize::try_from(end - at).map_or(buffer.len(), |w| w.min(buffer.len()));
        let read = nix::sys::uio::pread(fd, &mut buffer[..want], off_t("pread", at)?)
            .map_err(|errno| Error::of("pread", errno))?;
        if read == 0 {
            break; // end of file
        }
        at += read as u64;
    }
    Ok(())
}

/// Reads back the pages `before` saw resident that are resident no more:
/// a maintenance job leaves the cache as it found it, even where the
/// kernel dropped pages on its way (a read-ahead given up for want of
/// memory, a swap of extents that empties the file's cache).
pub fn read_back_lost(fd: BorrowedFd<'_>, before: &Residency) -> Result<()> {
    // Nothing was resident, so nothing can be lost: spares a mapping and a
    // mincore per chunk of a cold file (16 per 128 MiB on btrfs, ~3 ms).
    if before.resident_pages() == 0 {
        return Ok(());
    }
    let now = residency(fd, before.start, before.end() - before.start)?;
    let lost = Residency {
        resident: before
            .resident
            .iter()
            .zip(&now.resident)
            .map(|(was, is)| *was && !*is)
            .collect(),
        ..now
    };
    for (start, length) in lost.resident_ranges() {
        read_into_cache(fd, start, length)?;
    }
    Ok(())
}

/// Drops clean pages of the range from the cache.
pub fn drop_cached(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    advise(fd, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
}

/// Whether `write_back` waits for the writes to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Yes,
}

/// Writes the range's dirty pages to disk (and waits, if asked), so that
/// they become clean and can be dropped.
pub fn write_back(fd: BorrowedFd<'_>, offset: u64, len: u64, wait: Wait) -> Result<()> {
    use nix::libc::{
        SYNC_FILE_RANGE_WAIT_AFTER, SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE,
    };
    let flags = match wait {
        Wait::No => SYNC_FILE_RANGE_WRITE,
        Wait::Yes => {
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    let to_off = |v: u64| off_t("sync_file_range", v);
    // SAFETY: sync_file_range takes an fd and integers.
    let rc =
        unsafe { nix::libc::sync_file_range(fd.as_raw_fd(), to_off(offset)?, to_off(len)?, flags) };
    Errno::result(rc)
        .map(drop)
        .map_err(|errno| Error::of("sync_file_range", errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_ranges_merge_neighbours() {
        let r = Residency {
            start: 8192,
            page_size: 4096,
            resident: vec![false, false, true, false, true, true, false],
        };
        assert_eq!(
            r.absent_ranges(),
            vec![(8192, 8192), (20480, 4096), (32768, 4096)]
        );
        assert_eq!(r.resident_pages(), 3);
        assert_eq!(r.resident_ranges(), vec![(16384, 4096), (24576, 8192)]);
        assert_eq!(r.at(16384), Some(true));
        assert_eq!(r.at(8192), Some(false));
        assert_eq!(r.at(0), None);
        assert_eq!(r.at(r.end()), None);
    }

    #[test]
    fn page_span_rounds_outward() {
        assert_eq!(page_span(1024, 1024, 4096), (0, 4096));
        assert_eq!(page_span(4096, 4097, 4096), (4096, 8192));
        assert_eq!(page_span(0, 0, 4096), (0, 0));
    }

    #[test]
    fn residency_of_a_fresh_file_is_measured() {
        use std::io::Write;
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&vec![7u8; 3 * 4096]).expect("write");
        let fd = std::os::fd::AsFd::as_fd(&file);
        let r = residency(fd, 0, 3 * 4096).expect("residency");
        assert_eq!(r.resident.len(), (3 * 4096 / page_size()) as usize);
        // Just written through the cache: resident.
        assert!(r.resident_pages() > 0);
    }
}
