"""Fills a fresh ext4 mount for bench/run: a contiguous file for the
foreground reader, then a file written into fragmented free space.

    fragment.py MOUNT BIG_MIB READ_MIB

Recipe (shared/TESTING.md): fill most of the free space with 64 KiB files,
delete every other one, write the file under test 64 KiB at a time with
fsync (each piece lands in a hole), then delete the rest of the filler so
contiguous free space exists for the defragmenter. Prints the filler count.
"""
import os
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
    os.makedirs(f"{root}/data")
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


if __name__ == "__main__":
    main()
