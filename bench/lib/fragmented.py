"""Writes one fragmented file for bench/tracking, the way bench/run and
the tests do (shared/TESTING.md): fill the free space with 64 KiB filler
files, delete every other one, write the file 64 KiB at a time with fsync
(each piece lands in a hole), then delete the rest of the filler so
contiguous free space exists (appending a piece every 0.4 s meanwhile, so
that the file is not quiet before), and write the file's last piece. Where the
file still came out in fewer than MIN_EXTENTS extents (ext4's allocator
does not always take the holes), it is deleted and written again, up to
TRIES times. Prints the wall-clock time (time.time()) right after the
last write's fsync, and the tries taken.

    fragmented.py MOUNT PATH SIZE_MIB
"""
import os
import re
import subprocess
import sys
import threading
import time

CHUNK = 64 * 1024
MIN_EXTENTS = 16
TRIES = 5


def extents(path):
    out = subprocess.run(["filefrag", path], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) extents? found", out).group(1))


def fill(work):
    os.makedirs(work)
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
    return fillers[1::2]


def delete(kept, work):
    for name in kept:
        os.unlink(name)
    os.rmdir(work)
    os.sync()


def main():
    root, path, size_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    work = f"{root}/.bench-filler"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for tries in range(1, TRIES + 1):
        kept = fill(work)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(size_mib * 1024 * 1024 // CHUNK - 1):
            os.write(fd, os.urandom(CHUNK))
            os.fsync(fd)
        # The filler goes while the file is still being written (a piece
        # every 0.4 s), so that it is never quiet before free space is
        # contiguous again; then a last piece after a short settle.
        deleter = threading.Thread(target=delete, args=(kept, work))
        deleter.start()
        while deleter.is_alive():
            time.sleep(0.4)
            os.write(fd, os.urandom(CHUNK))
            os.fsync(fd)
        deleter.join()
        time.sleep(0.4)
        os.write(fd, os.urandom(CHUNK))
        os.fsync(fd)
        last = time.time()
        os.close(fd)
        if extents(path) >= MIN_EXTENTS or tries == TRIES:
            break
        os.unlink(path)
        os.sync()
    print(f"{last:.3f} {tries}")


if __name__ == "__main__":
    main()
