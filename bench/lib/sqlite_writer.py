"""A SQLite client for bench/run part 6: commits a small transaction 40
times a second (synchronous=FULL, the rollback journal: four fsyncs a
commit, as a careful application makes them), until SIGTERM or SIGINT;
then checks the database and writes what it saw as JSON.

    sqlite_writer.py DATABASE OUT.json [SKIP_S]

Commits in the first SKIP_S seconds (a warm-up) are not counted.

A stall is the time one transaction took from BEGIN to the end of its
COMMIT: the client waits this long when its fsyncs queue behind someone
else's I/O or behind a journal commit. The three longest are listed with
the wall-clock time they began (UTC, as the service's log lines are
stamped), to find what caused them. At the end the database must pass
`PRAGMA integrity_check` and hold every row committed.
"""
import json
import os
import signal
import sqlite3
import sys
import time

from stalls import Stalls

RATE = 40  # transactions a second
stop = False


def on_signal(_signum, _frame):
    global stop
    stop = True


def main():
    path, out = sys.argv[1], sys.argv[2]
    skip = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    payload = os.urandom(512)
    stalls = Stalls()
    committed = 0
    started = time.monotonic()
    counting = started + skip
    next_at = started
    while not stop:
        t0, wall0 = time.monotonic(), time.time()
        db.execute("BEGIN")
        db.execute("INSERT INTO orders (at, payload) VALUES (?, ?)", (wall0, payload))
        db.execute("COMMIT")
        committed += 1
        if t0 >= counting:
            stalls.add(time.monotonic() - t0, wall0)
        # Paced, not flat out: a client at a steady rate, which falls
        # behind (and does not catch up in a burst) when a commit stalls.
        next_at = max(next_at + 1 / RATE, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))
    elapsed = time.monotonic() - counting
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = db.execute("SELECT count(*) FROM orders").fetchone()[0]
    db.close()
    summary = stalls.summary(elapsed)
    result = {
        "transactions": summary.pop("count"),
        "elapsed_s": elapsed,
        **summary,
        "integrity": integrity,
        "rows_committed": committed,
        "rows_found": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
