//! A zeroed byte buffer whose address is aligned, as direct I/O wants it
//! (to the device's logical block size at least; a page is always enough).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// A heap buffer of `len` bytes aligned to `align` (a power of two),
/// zeroed when made. Owns its memory; frees it on drop.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8], like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer; None when `len` is 0, `align` is not a power of
    /// two, or the memory cannot be had.
    pub fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never true: an empty buffer cannot be made.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn align(&self) -> usize {
        self.layout.align()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, then written)
        // bytes owned by self, alive as long as the borrow of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and the borrow of self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from alloc_zeroed with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len())
            .field("align", &self.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        let mut buf = AlignedBuf::new(3 * 4096, 4096).expect("allocate");
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert_eq!(buf.len(), 3 * 4096);
        assert!(buf.iter().all(|&b| b == 0));
        buf[4095] = 7;
        assert_eq!(buf[4095], 7);
    }

    #[test]
    fn bad_requests_are_refused_not_panics() {
        assert!(AlignedBuf::new(0, 4096).is_none());
        assert!(AlignedBuf::new(4096, 3000).is_none());
    }
}
