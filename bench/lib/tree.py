"""Makes a tree of N small files for bench/run (as bench/footprint does):
directories of 1,000 files of 4 KiB each.

    tree.py ROOT N
"""
import os
import sys


def main():
    root, n = sys.argv[1], int(sys.argv[2])
    data = b"x" * 4096
    for d in range((n + 999) // 1000):
        os.makedirs(f"{root}/d{d:03}")
        for f in range(min(1000, n - d * 1000)):
            with open(f"{root}/d{d:03}/f{f:04}", "wb") as fh:
                fh.write(data)


if __name__ == "__main__":
    main()
