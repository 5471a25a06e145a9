//! The page-cache keeper of one move: leaves the page cache as the move
//! found it, and keeps the relocation fast over pages in the cache.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

use crate::plan::Chunk;
use crate::sys::{self, Residency, Wait};

/// The largest folio the page cache builds on x86-64 (a PMD): cache
/// windows are aligned to it, so no folio straddles a window's edge.
const FOLIO_WINDOW: u64 = 2 << 20;

/// Keeps the page cache as it was found, and keeps MOVE_EXT fast.
///
/// Before a chunk is moved, it notes which of its pages were resident and
/// reads the rest ahead (MOVE_EXT would otherwise read them one page at a
/// time); after the move it writes the chunk back and drops the pages that
/// were not resident before.
///
/// MOVE_EXT is also about fifty times slower over the large folios that
/// ordinary reads and writes leave in the cache than over the single pages
/// that fadvise(WILLNEED) reads in (measured on 6.18: 74 ms against 1.4 ms
/// per MiB). So the resident pages of each folio-aligned window are written
/// back, dropped and read in again before the window is moved; they are
/// resident again afterwards. Pages mapped by a process cannot be dropped
/// and are moved as they are: slower, never wrong.
///
/// Where the relocation does not read through the cache (XFS copies with
/// direct I/O, and its exchange drops the range's cache), nothing is read
/// ahead or reshaped: only what was resident is read back after the move.
pub(super) struct CacheKeeper<'fd> {
    fd: BorrowedFd<'fd>,
    block_size: u64,
    /// Read each chunk ahead and reshape its folios (for MOVE_EXT).
    reads_ahead: bool,
    /// What was resident in each window before anything was touched,
    /// oldest first. (Measuring again after a reshape would be wrong:
    /// mincore counts a page only once its read has completed.)
    snapshots: VecDeque<Residency>,
    /// Bytes below this offset have been snapshotted and reshaped.
    reshaped_until: u64,
    /// Chunks prepared or moved but not yet written back, oldest first,
    /// with what was resident before (None: unknown, so drop nothing) and
    /// whether they were moved.
    pending: VecDeque<(Chunk, Option<Residency>, bool)>,
}

impl<'fd> CacheKeeper<'fd> {
    pub(super) fn new(fd: BorrowedFd<'fd>, block_size: u64, reads_ahead: bool) -> Self {
        CacheKeeper {
            fd,
            block_size,
            reads_ahead,
            snapshots: VecDeque::new(),
            reshaped_until: 0,
            pending: VecDeque::new(),
        }
    }

    fn bytes(&self, chunk: &Chunk) -> (u64, u64) {
        (
            chunk.start * self.block_size,
            chunk.len.get() * self.block_size,
        )
    }

    pub(super) fn prepare(&mut self, chunk: &Chunk) {
        let (offset, len) = self.bytes(chunk);
        self.reshape(offset, offset + len);
        let residency = self.resident_before(offset, len);
        // A hint: if it fails the move just reads the pages itself.
        if self.reads_ahead {
            let _ = sys::read_ahead(self.fd, offset, len);
        }
        self.pending.push_back((*chunk, residency, false));
    }

    /// Snapshots the windows holding `offset..end` that are not yet, and
    /// turns their resident large folios into single pages.
    fn reshape(&mut self, offset: u64, end: u64) {
        let start = self
            .reshaped_until
            .max(offset / FOLIO_WINDOW * FOLIO_WINDOW);
        let window_end = end.div_ceil(FOLIO_WINDOW) * FOLIO_WINDOW;
        if start >= window_end {
            return;
        }
        self.reshaped_until = window_end;
        let len = window_end - start;
        let before = match sys::residency(self.fd, start, len) {
            Ok(before) => before,
            Err(e) => {
                tracing::debug!("mincore failed, page cache left as is: {e}");
                return;
            }
        };
        if self.reads_ahead
            && before.resident_pages() > 0
            && sys::write_back(self.fd, start, len, Wait::Yes).is_ok()
        {
            let _ = sys::drop_cached(self.fd, start, len);
            for (offset, length) in before.resident_ranges() {
                let _ = sys::read_ahead(self.fd, offset, length);
            }
        }
        self.snapshots.push_back(before);
    }

    /// What the snapshots say was resident in `offset..offset+len`; None
    /// when some page was never snapshotted.
    fn resident_before(&self, offset: u64, len: u64) -> Option<Residency> {
        let page = sys::page_size();
        let start = offset / page * page;
        let pages = (offset + len).div_ceil(page) - start / page;
        let resident = (0..pages)
            .map(|i| {
                let at = start + i * page;
                self.snapshots.iter().find_map(|s| s.at(at))
            })
            .collect::<Option<Vec<bool>>>()?;
        Some(Residency {
            start,
            page_size: page,
            resident,
        })
    }

    /// Forgets snapshots wholly below `offset`.
    fn forget_before(&mut self, offset: u64) {
        while self.snapshots.front().is_some_and(|s| s.end() <= offset) {
            self.snapshots.pop_front();
        }
    }

    /// `chunk` was moved: start its write-back, and finish the ones before.
    pub(super) fn moved(&mut self, chunk: &Chunk) {
        let (offset, len) = self.bytes(chunk);
        let _ = sys::write_back(self.fd, offset, len, Wait::No);
        if let Some(entry) = self.pending.iter_mut().find(|(c, _, _)| c == chunk) {
            entry.2 = true;
        }
        while self
            .pending
            .front()
            .is_some_and(|(c, _, moved)| *moved && c != chunk)
        {
            if let Some((c, residency, _)) = self.pending.pop_front() {
                self.settle(&c, residency.as_ref());
            }
        }
        if let Some((oldest, _, _)) = self.pending.front() {
            self.forget_before(oldest.start * self.block_size);
        }
    }

    /// Waits for the write-back of every chunk moved, and settles them:
    /// after this the move has nothing of its own in flight but what it
    /// read ahead.
    pub(super) fn settle_moved(&mut self) {
        while self.pending.front().is_some_and(|(_, _, moved)| *moved) {
            if let Some((c, residency, _)) = self.pending.pop_front() {
                self.settle(&c, residency.as_ref());
            }
        }
        if let Some((oldest, _, _)) = self.pending.front() {
            self.forget_before(oldest.start * self.block_size);
        }
    }

    pub(super) fn finish_all(&mut self) {
        while let Some((chunk, residency, _)) = self.pending.pop_front() {
            self.settle(&chunk, residency.as_ref());
        }
    }

    fn settle(&self, chunk: &Chunk, residency: Option<&Residency>) {
        let (offset, len) = self.bytes(chunk);
        // Dirty pages cannot be dropped: wait for them to reach the disk.
        if let Err(e) = sys::write_back(self.fd, offset, len, Wait::Yes) {
            tracing::debug!("write-back of {offset}+{len} failed: {e}");
            return;
        }
        let Some(residency) = residency else {
            return;
        };
        for (start, length) in residency.absent_ranges() {
            let _ = sys::drop_cached(self.fd, start, length);
        }
        self.restore_resident(residency);
    }

    /// Reads back the pages that were resident before but are not now: the
    /// read-ahead that refilled them gives up when memory is short (seen on
    /// CI: 22 of 16,384 pages of a hot file missing after its move).
    fn restore_resident(&self, before: &Residency) {
        if let Err(e) = sys::read_back_lost(self.fd, before) {
            tracing::debug!("reading lost pages back into the cache failed: {e}");
        }
    }
}
