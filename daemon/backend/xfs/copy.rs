//! The copy of one chunk of the file into the donor, with direct I/O on
//! both sides: block-aligned pieces through an aligned buffer, so the copy
//! fills no page cache and leaves none on the donor (which SWAPEXT
//! requires). The file's last block, when partial, is read short and
//! written whole, zero-padded as the file reads past its end; the donor's
//! size is then set back to the file's.

use std::os::fd::BorrowedFd;

use super::exchange::ExchangeError;
use crate::sys::{self, AlignedBuf};

/// One direct-I/O piece: `io_len` bytes (whole blocks) at `offset`, of
/// which the first `content_len` lie inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub offset: u64,
    pub io_len: u64,
    pub content_len: u64,
}

/// Cuts the bytes `[start, end)` of a file of `size` bytes into pieces of
/// at most `max_len` bytes (a multiple of `block`), in whole blocks; what
/// lies past the file's end is left out, except the rest of its last
/// block.
pub(super) fn pieces(start: u64, end: u64, size: u64, block: u64, max_len: u64) -> Vec<Piece> {
    let block = block.max(1);
    let max_len = (max_len / block).max(1) * block;
    let end = end.min(size);
    let mut out = Vec::new();
    let mut offset = start;
    while offset < end {
        let content_len = (end - offset).min(max_len);
        let io_len = content_len.div_ceil(block) * block;
        out.push(Piece {
            offset,
            io_len,
            content_len,
        });
        offset += content_len;
    }
    out
}

/// Copies `piece` from `reader` (the file, O_DIRECT) into `donor`
/// (O_DIRECT) through `buf`; the bytes of file content copied.
pub(super) fn copy_piece(
    reader: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    buf: &mut AlignedBuf,
    piece: Piece,
    block: u64,
) -> Result<u64, ExchangeError> {
    let too_big = || ExchangeError::Io(sys::Error::of("copy", nix::errno::Errno::EOVERFLOW));
    let io_len = usize::try_from(piece.io_len).map_err(|_| too_big())?;
    let content_len = usize::try_from(piece.content_len).map_err(|_| too_big())?;
    let block = usize::try_from(block.max(1)).map_err(|_| too_big())?;
    let buf = buf.get_mut(..io_len).ok_or_else(too_big)?;
    let mut got = 0usize;
    while got < content_len {
        let n = sys::read_at(reader, &mut buf[got..], piece.offset + got as u64)
            .map_err(ExchangeError::Io)?;
        // The end of the file came early, or a short read left an
        // unaligned offset before the end: the file shrank since its size
        // was taken. The swap would refuse it anyway; stop now.
        if n == 0 || (got + n < content_len && !(got + n).is_multiple_of(block)) {
            return Err(ExchangeError::Shrank);
        }
        got += n;
    }
    // Past the file's end the last block reads as zeros; so must the donor's.
    buf[content_len.min(got)..].fill(0);
    let mut put = 0usize;
    while put < io_len {
        let n = sys::write_at(donor, &buf[put..], piece.offset + put as u64)
            .map_err(ExchangeError::Io)?;
        if n == 0 || (put + n < io_len && !(put + n).is_multiple_of(block)) {
            return Err(ExchangeError::Io(sys::Error::NoSpace));
        }
        put += n;
    }
    Ok(piece.content_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_in_whole_blocks() {
        let p = pieces(0, 10 << 20, 10 << 20, 4096, 4 << 20);
        let lens: Vec<u64> = p.iter().map(|p| p.io_len).collect();
        assert_eq!(lens, vec![4 << 20, 4 << 20, 2 << 20]);
        assert!(p.iter().all(|p| p.io_len == p.content_len));
        assert_eq!(p[2].offset, 8 << 20);
    }

    #[test]
    fn the_last_partial_block_is_read_short_and_written_whole() {
        // A 10,000-byte file: blocks 0..3, the last one 1,808 bytes long.
        let p = pieces(0, 3 * 4096, 10_000, 4096, 1 << 20);
        assert_eq!(
            p,
            vec![Piece {
                offset: 0,
                io_len: 12_288,
                content_len: 10_000
            }]
        );
        let tail = pieces(8192, 12_288, 10_000, 4096, 4096);
        assert_eq!(tail.len(), 1);
        assert_eq!((tail[0].io_len, tail[0].content_len), (4096, 1808));
    }

    #[test]
    fn nothing_past_the_end_and_odd_buffer_sizes_round_to_blocks() {
        assert!(pieces(16_384, 20_480, 10_000, 4096, 1 << 20).is_empty());
        let p = pieces(0, 3 * 4096, 3 * 4096, 4096, 5000);
        assert!(p.iter().all(|p| p.io_len == 4096));
        assert_eq!(p.len(), 3);
    }
}
