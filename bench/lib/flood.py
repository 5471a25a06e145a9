"""A flood of small writes for bench/tracking: WRITES_PER_S small writes a
second, spread round-robin over FILES files (kept open), for SECONDS.

    flood.py DIR FILES WRITES_PER_S SECONDS

The writes are paced in 10 ms batches. Prints one JSON line: writes made,
seconds taken, the rate reached.
"""
import json
import os
import sys
import time

BATCH_S = 0.01
WRITE = b"w" * 64


def main():
    root, files, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    os.makedirs(root, exist_ok=True)
    fds = [os.open(f"{root}/f{i:04}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(files)]
    per_batch = max(1, round(rate * BATCH_S))
    n = 0
    start = time.monotonic()
    tick = start
    while tick - start < seconds:
        for _ in range(per_batch):
            # Overwrites within the first 4 KiB: the files stay small.
            os.pwrite(fds[n % files], WRITE, (n // files) % 64 * 64)
            n += 1
        tick += BATCH_S
        ahead = tick - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    took = time.monotonic() - start
    for fd in fds:
        os.close(fd)
    print(json.dumps({"writes": n, "seconds": round(took, 3), "writes_per_s": round(n / took, 1)}))


if __name__ == "__main__":
    main()
