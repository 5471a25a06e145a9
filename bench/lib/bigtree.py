"""Makes a tree of FILES empty files in DIRS directories, two levels deep
(ROOT/tNNN/dNNNNNN/fNN), as fast as python can: os.mkdir, then os.open
with O_CREAT and os.close. Prints the seconds it took.

    bigtree.py ROOT FILES DIRS
"""
import os
import sys
import time


def main():
    root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    per_dir = files // dirs
    start = time.monotonic()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(dirs):
        top = f"{root}/t{d // 1000:03}"
        if d % 1000 == 0:
            os.mkdir(top)
        path = f"{top}/d{d:06}"
        os.mkdir(path)
        for f in range(per_dir):
            os.close(os.open(f"{path}/f{f:02}", flags, 0o644))
    os.sync()
    print(f"{time.monotonic() - start:.1f}")


if __name__ == "__main__":
    main()
