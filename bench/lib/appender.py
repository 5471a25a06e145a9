"""A foreground writer for bench/run: appends 4 KiB and fsyncs after every
write, until SIGTERM or SIGINT, then writes what it saw as JSON.

    appender.py FILE OUT.json [SKIP_S]

Writes in the first SKIP_S seconds (a warm-up) are not counted.

A stall is the time one write + fsync took: a writer waits this long when
something holds the file's or the journal's locks (MOVE_EXT holds the
inode lock for the whole call; a chunked mover for one chunk). So that a
long run cannot fill the filesystem, the file is truncated to 0 whenever it
reaches 16 MiB; that truncate is not timed.

The three longest stalls are listed with the wall-clock time they began
(UTC, as the service's log lines are stamped), to find what caused them.
"""
import json
import os
import signal
import sys
import time

from stalls import Stalls

stop = False


def on_signal(_signum, _frame):
    global stop
    stop = True


def main():
    path, out = sys.argv[1], sys.argv[2]
    skip = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    block = b"a" * 4096
    wrap = 16 << 20
    size = 0
    truncates = 0
    stalls = Stalls()
    started = time.monotonic()
    counting = started + skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while not stop:
            t0, wall0 = time.monotonic(), time.time()
            os.write(fd, block)
            os.fsync(fd)
            if t0 >= counting:
                stalls.add(time.monotonic() - t0, wall0)
            size += len(block)
            if size >= wrap:
                os.ftruncate(fd, 0)
                size = 0
                truncates += 1
    finally:
        os.close(fd)
    elapsed = time.monotonic() - counting
    summary = stalls.summary(elapsed)
    result = {
        "writes": summary.pop("count"),
        "truncates": truncates,
        "elapsed_s": elapsed,
        "writes_per_s": summary.pop("per_s"),
        **summary,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
