"""Fills a fresh ext4 mount for bench/run: a contiguous file for the
foreground reader, then a file written into fragmented free space.

    fragment.py MOUNT BIG_MIB READ_MIB
    fragment.py --free-space IMAGE FILE_BYTES
    fragment.py --free-space-xfs IMAGE FILE_BYTES

Recipe (shared/TESTING.md): fill most of the free space with 64 KiB files,
delete every other one, write the file under test 64 KiB at a time with
fsync (each piece lands in a hole), then delete the rest of the filler so
contiguous free space exists for the defragmenter. Prints the filler count.

--free-space: what the free space of an unmounted image allows a file of
FILE_BYTES, as JSON (read with dumpe2fs): the fewest extents any placement
could reach, its largest free runs, each cut at ext4's longest extent
(32768 blocks), taken until they hold the file. --free-space-xfs: the same
for an XFS image, read with `xfs_db -r -c 'freesp -d'` (runs never cross
an allocation group; XFS's longest extent, 2^21 blocks, is longer).
"""
import json
import os
import re
import subprocess
import sys

CHUNK = 64 * 1024


def write_file(path, mib, fsync_each):
    with open(path, "wb") as f:
        for _ in range(mib * 1024 * 1024 // CHUNK):
            f.write(os.urandom(CHUNK))
            if fsync_each:
                f.flush()
                os.fsync(f.fileno())
        f.flush()
        os.fsync(f.fileno())


def main():
    root, big_mib, read_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(f"{root}/data", exist_ok=True)  # btrfs: a subvolume made before
    os.makedirs(f"{root}/filler")
    # The reader's file first, while free space is contiguous.
    write_file(f"{root}/data/fio-read", read_mib, fsync_each=False)
    # Fill the free space, but leave room for the file under test in the
    # holes: it needs big_mib in 64 KiB holes, so the filler must occupy at
    # least as much again (plus a margin for metadata).
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if free < 2 * big_mib * 1024 * 1024 * 1.1:
        sys.exit(f"fragment.py: {free >> 20} MiB free, too little for a {big_mib} MiB file")
    chunk = os.urandom(CHUNK)
    n = 0
    try:
        while True:
            with open(f"{root}/filler/{n}", "wb") as f:
                f.write(chunk)
            n += 1
    except OSError:  # full: the last one may be there, empty or short
        if os.path.exists(f"{root}/filler/{n}"):
            os.unlink(f"{root}/filler/{n}")
    os.sync()
    for i in range(0, n, 2):
        os.unlink(f"{root}/filler/{i}")
    os.sync()
    write_file(f"{root}/data/big", big_mib, fsync_each=True)
    for i in range(1, n, 2):
        os.unlink(f"{root}/filler/{i}")
    os.rmdir(f"{root}/filler")
    os.sync()
    print(n)


def interleaved(path, mib):
    """Writes PATH (MIB MiB) in 64 KiB pieces, each fsync'd, in turn with a
    partner file that is then deleted: PATH's extents alternate with the
    partner's holes, in whatever free space there is."""
    partner = path + ".partner"
    with open(path, "wb") as f, open(partner, "wb") as g:
        for _ in range(mib * 1024 * 1024 // CHUNK):
            for h in (f, g):
                h.write(os.urandom(CHUNK))
                h.flush()
                os.fsync(h.fileno())
    os.unlink(partner)
    os.sync()


# ext4's longest extent, in blocks.
MAX_EXTENT_BLOCKS = 32768


def free_runs(image):
    """The free runs of an ext4 image, (start, length) in blocks, in disk
    order, joined across block group edges; and the block size."""
    out = subprocess.run(["dumpe2fs", image], capture_output=True, text=True, check=True).stdout
    block_size = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    runs = []
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("Free blocks: "):
            continue
        for part in line[len("Free blocks: "):].split(","):
            if not part.strip():
                continue
            first, _, last = part.strip().partition("-")
            start, end = int(first), int(last or first) + 1
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1][1] += end - start
            else:
                runs.append([start, end - start])
    return runs, block_size


def free_space(image, file_bytes):
    runs, block_size = free_runs(image)
    return pieces_needed(runs, block_size, file_bytes, MAX_EXTENT_BLOCKS)


# XFS's longest extent (MAXEXTLEN), in blocks.
XFS_MAX_EXTENT_BLOCKS = 1 << 21


def free_runs_xfs(image):
    """The free runs of an XFS image, (start, length) in blocks, adjacent
    records of one allocation group joined; and the block size."""
    geo = subprocess.run(["xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize", image],
                         capture_output=True, text=True, check=True).stdout
    block_size = int(re.search(r"blocksize = (\d+)", geo).group(1))
    out = subprocess.run(["xfs_db", "-r", "-c", "freesp -d", image],
                         capture_output=True, text=True, check=True).stdout
    runs = []
    last = None
    for line in out.splitlines():
        f = line.split()
        if len(f) != 3 or not all(x.isdigit() for x in f):
            continue
        ag, start, length = map(int, f)
        if last and last[0] == ag and last[1] + last[2] == start:
            last[2] += length
        else:
            last = [ag, start, length]
            runs.append(last)
    return [(start, length) for _, start, length in runs], block_size


def pieces_needed(runs, block_size, file_bytes, max_blocks):
    need = -(-file_bytes // block_size)
    pieces = []
    for _, length in runs:
        whole, rest = divmod(length, max_blocks)
        pieces += [max_blocks] * whole + ([rest] if rest else [])
    pieces.sort(reverse=True)
    held = fewest = 0
    for piece in pieces:
        if held >= need:
            break
        held += piece
        fewest += 1
    return {
        "block_size": block_size,
        "file_blocks": need,
        "free_blocks": sum(length for _, length in runs),
        "free_runs": len(runs),
        "largest_run_blocks": max((length for _, length in runs), default=0),
        "fewest_extents": fewest if held >= need else None,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--free-space"]:
        print(json.dumps(free_space(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1:2] == ["--free-space-xfs"]:
        runs, block_size = free_runs_xfs(sys.argv[2])
        print(json.dumps(pieces_needed(runs, block_size, int(sys.argv[3]), XFS_MAX_EXTENT_BLOCKS)))
    elif sys.argv[1:2] == ["--interleaved"]:
        interleaved(sys.argv[2], int(sys.argv[3]))
    else:
        main()
