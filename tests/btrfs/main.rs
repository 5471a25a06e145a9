//! btrfs on real images (`ImageSpec::btrfs`): the backend's calls
//! (`backend`), `defragd defrag` and `check` as operators run them against
//! `btrfs filesystem defragment` on an identical copy (`cli`), a move
//! killed midway (`crash`), and the service covering a btrfs subvolume
//! (`service`). Each checks the data (md5) and the filesystem
//! (`btrfs check --readonly`), and what stays shared with a snapshot
//! (`btrfs filesystem du`). Root only: without root each test says so and
//! passes (CI turns that into a failure).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

mod backend;
mod cli;
mod crash;
mod page_cache;
mod service;
mod writers;

/// Appends to every file of `paths` in turn, `piece` bytes at a time, each
/// write fsync'd, until each holds `size` bytes: their extents interleave
/// on disk. `fill` makes each piece's bytes from (file index, piece index).
pub(crate) fn interleave(
    paths: &[PathBuf],
    size: u64,
    piece: usize,
    fill: &dyn Fn(usize, u64, &mut [u8]),
) {
    let mut files: Vec<File> = paths
        .iter()
        .map(|p| File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display())))
        .collect();
    let mut buf = vec![0u8; piece];
    for n in 0..size / piece as u64 {
        for (i, f) in files.iter_mut().enumerate() {
            fill(i, n, &mut buf);
            f.write_all(&buf).expect("write");
            f.sync_all().expect("fsync");
        }
    }
}

/// Incompressible bytes, different for every file and piece.
pub(crate) fn random_fill(i: usize, n: u64, buf: &mut [u8]) {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Text that compresses well, different for every file and piece.
pub(crate) fn text_fill(i: usize, n: u64, buf: &mut [u8]) {
    let line = format!("file {i} piece {n}: the quick brown fox jumps over the lazy dog\n");
    for (b, c) in buf.iter_mut().zip(line.bytes().cycle()) {
        *b = c;
    }
}

/// `files` (under one directory) fragmented in pieces of `piece` bytes
/// up to `size` each: written in turn with a filler beside them, the
/// filler deleted afterwards, so that free space to merge them exists.
pub(crate) fn fragmented(files: &[PathBuf], size: u64, piece: usize) {
    let Some(dir) = files.first().and_then(|f| f.parent()) else {
        return;
    };
    let filler = dir.join(".filler");
    let mut all = files.to_vec();
    all.push(filler.clone());
    interleave(&all, size, piece, &random_fill);
    std::fs::remove_file(&filler).expect("delete the filler");
}
