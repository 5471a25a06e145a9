#!/usr/bin/env python3
"""A database client the way applications write: python3's sqlite3, fsync on
(synchronous=FULL), one row per transaction at a steady rate. Used by the
write-tracking tests as a live writer next to the service.

usage: sqlite_writer.py DB MODE ROWS_PER_S BLOB_BYTES
  MODE: wal or delete (rollback journal)
  SIGUSR1 pauses / resumes between transactions; SIGTERM stops after the
  current one. On exit it prints "committed N" (rows whose COMMIT returned).
  Every second it writes the committed count to DB.count (atomically).
"""
import os
import signal
import sqlite3
import sys
import time

db, mode, rate, blob = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
state = {"paused": False, "stop": False}


def toggle(_sig, _frame):
    state["paused"] = not state["paused"]


def stop(_sig, _frame):
    state["stop"] = True


signal.signal(signal.SIGUSR1, toggle)
signal.signal(signal.SIGTERM, stop)

conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=%s" % ("WAL" if mode == "wal" else "DELETE"))
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
committed = conn.execute("SELECT count(*) FROM t").fetchone()[0]
period = 1.0 / rate
next_at = time.monotonic()
last_report = 0.0


def report():
    tmp = db + ".count.tmp"
    with open(tmp, "w") as f:
        f.write("%d %s\n" % (committed, "paused" if state["paused"] else "writing"))
    os.replace(tmp, db + ".count")


while not state["stop"]:
    now = time.monotonic()
    if now - last_report >= 0.2:
        report()
        last_report = now
    if state["paused"]:
        time.sleep(0.05)
        next_at = time.monotonic()
        continue
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(blob),))
    conn.execute("COMMIT")
    committed += 1
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
conn.close()
report()
print("committed %d" % committed, flush=True)
