"""Writes one fragmented file for bench/tracking, the way the tests do
(shared/TESTING.md): take all but SPARE_MIB of the free space with one
fallocated ballast file, fill the rest with 64 KiB filler files, delete
every other one, write the file 64 KiB at a time with fsync (each piece
lands in a hole), then delete the ballast and the rest of the filler so
contiguous free space exists, and write the file's last piece. Prints the
wall-clock time (time.time()) right after that last write's fsync.

    fragmented.py MOUNT PATH SIZE_MIB SPARE_MIB
"""
import os
import sys
import time

CHUNK = 64 * 1024


def main():
    root, path, size_mib, spare_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    work = f"{root}/.bench-filler"
    os.makedirs(work)
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    ballast = os.open(f"{work}/ballast", os.O_WRONLY | os.O_CREAT, 0o644)
    os.posix_fallocate(ballast, 0, max(CHUNK, free - (spare_mib << 20)))
    os.close(ballast)
    chunk = os.urandom(CHUNK)
    fillers = []
    try:
        while True:
            name = f"{work}/{len(fillers)}"
            fillers.append(name)
            with open(name, "wb") as f:
                f.write(chunk)
    except OSError:  # full
        if os.path.exists(fillers[-1]):
            os.unlink(fillers[-1])
        fillers.pop()
    os.sync()
    for name in fillers[::2]:
        os.unlink(name)
    os.sync()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(size_mib * 1024 * 1024 // CHUNK - 1):
        os.write(fd, os.urandom(CHUNK))
        os.fsync(fd)
    os.unlink(f"{work}/ballast")
    for name in fillers[1::2]:
        os.unlink(name)
    os.rmdir(work)
    os.sync()
    os.write(fd, os.urandom(CHUNK))
    os.fsync(fd)
    last = time.time()
    os.close(fd)
    print(f"{last:.3f}")


if __name__ == "__main__":
    main()
