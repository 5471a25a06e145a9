//! `defragd bench-move-ext FILE` (hidden, for bench/run): the kernel's own
//! MOVE_EXT rate, the yardstick for every defragmenter. ONE call over the
//! whole file into an O_TMPFILE donor allocated beforehand in the file's own
//! directory, with nothing read ahead and nothing cached first, so the kernel
//! reads every page itself. Prints one JSON object. Meant for a dense file
//! on a scratch filesystem (the donor also covers any holes).

use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::ext4;
use crate::sys::{self, Access, Flush};

#[derive(Debug, Serialize)]
struct Report {
    path: String,
    size_bytes: u64,
    block_size: u64,
    /// Blocks asked for (the whole file) and blocks the kernel says it moved.
    blocks: u64,
    moved_blocks: u64,
    bytes: u64,
    /// The MOVE_EXT call alone.
    elapsed_s: f64,
    mib_per_s: f64,
    /// fallocate of the donor, before the clock starts.
    allocate_s: f64,
    extents_before: usize,
    extents_after: usize,
    donor_extents: usize,
}

pub fn run(file: &Path) -> ExitCode {
    match measure(file) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("defragd bench-move-ext: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!(
                "defragd bench-move-ext: {}: {}",
                crate::escape::escaped(file),
                crate::escape::escaped(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn measure(path: &Path) -> anyhow::Result<Report> {
    let name = path.file_name().context("FILE must name a file")?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = sys::open_dir(parent).context("its directory")?;
    let pinned = sys::pin_beneath(dir.as_fd(), Path::new(name))?;
    let stat = sys::stat(pinned.as_fd())?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        bail!("not a regular file");
    }
    let file = sys::reopen(pinned.as_fd(), Access::ReadWrite)?;
    let block_size = crate::backend::probe(file.as_fd())?.1.block_size;
    let size_bytes = u64::try_from(stat.st_size).context("negative size")?;
    let blocks = size_bytes.div_ceil(block_size);
    let len = NonZeroU64::new(blocks).context("the file is empty")?;

    // Real blocks for delayed allocations, and a cold cache: MOVE_EXT must
    // read every page itself.
    sys::sync_data(file.as_fd())?;
    sys::drop_cached(file.as_fd(), 0, size_bytes)?;
    let extents_before = sys::fiemap(file.as_fd(), Flush::No)?.len();

    let donor = sys::create_tmpfile(dir.as_fd())?;
    let started = Instant::now();
    sys::allocate(donor.as_fd(), 0, blocks * block_size)?;
    let allocate_s = started.elapsed().as_secs_f64();
    let donor_extents = sys::fiemap(donor.as_fd(), Flush::No)?.len();

    let started = Instant::now();
    let result = ext4::move_extents(file.as_fd(), donor.as_fd(), 0, len);
    let elapsed_s = started.elapsed().as_secs_f64();
    let moved_blocks = match result {
        Ok(moved) if moved == blocks => moved,
        Ok(moved) => bail!("short move: asked for {blocks} blocks, the kernel moved {moved}"),
        Err(failure) => return Err(failure.into()),
    };
    let extents_after = sys::fiemap(file.as_fd(), Flush::No)?.len();
    let bytes = moved_blocks * block_size;
    Ok(Report {
        path: path.display().to_string(),
        size_bytes,
        block_size,
        blocks,
        moved_blocks,
        bytes,
        elapsed_s,
        mib_per_s: bytes as f64 / f64::from(1u32 << 20) / elapsed_s.max(1e-9),
        allocate_s,
        extents_before,
        extents_after,
        donor_extents,
    })
}
