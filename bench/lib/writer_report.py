"""Part 6 of bench/run (bench/lib/writer.sh): a SQLite client committing 40
transactions a second beside the move, alone and beside each mover;
imported by report.py, whose helpers it uses.

The goal is the database user's: while the default service works beside
it, no commit takes more than 100 ms longer than the longest one alone,
and the database stays whole.
"""
from report import fmt, table, times, ratio

SCENARIOS = (
    ("alone", "alone"),
    ("e4defrag", "beside e4defrag"),
    ("service", "beside the service (default config)"),
    ("service-unthrottled", "beside it, unthrottled"),
)
# How much longer than alone the longest commit may take.
GOAL_EXTRA_MS = 100


def writer_part(fig, goals):
    wr = fig.get("writer", {})
    res = {}
    rows = []
    for scen, label in SCENARIOS:
        s = wr.get(scen, {})
        c = s.get("client") or {}
        r = {k: c.get(k) for k in ("transactions", "per_s", "p50_ms", "p99_ms", "max_stall_ms",
                                   "integrity", "rows_committed", "rows_found", "longest")}
        for k in ("defrag_s", "finished", "finished_under_load", "extents_after"):
            r[k] = s.get(k)
        r["whole"] = r["integrity"] == "ok" and r["rows_found"] is not None and \
            r["rows_found"] == r["rows_committed"]
        res[scen] = r
        if r["defrag_s"] is None:
            done = "-"
        elif not r["finished"]:
            done = f"not done in {fmt(r['defrag_s'], 0)} s"
        else:
            done = f"{fmt(r['defrag_s'])} s" + ("" if r["finished_under_load"] else " (after the client)")
        rows.append([label, fmt(r["transactions"], 0), fmt(r["per_s"]), fmt(r["p50_ms"]),
                     fmt(r["p99_ms"]), fmt(r["max_stall_ms"]), done, fmt(r["extents_after"]),
                     "yes" if r["whole"] else "NO"])
    part = "6. SQLite client"
    alone = res["alone"]["max_stall_ms"]
    svc = res["service"]["max_stall_ms"]
    ok = alone is not None and svc is not None and svc <= alone + GOAL_EXTRA_MS
    goals.add(part, f"service: longest commit <= alone's + {GOAL_EXTRA_MS} ms", f"{fmt(svc)} ms",
              ok and res["service"]["whole"],
              f"alone: {fmt(alone)} ms, e4defrag: {fmt(res['e4defrag']['max_stall_ms'])} ms, "
              f"unthrottled: {fmt(res['service-unthrottled']['max_stall_ms'])} ms",
              svc, None if alone is None else alone + GOAL_EXTRA_MS)
    res["p99_vs_alone"] = {scen: ratio(res[scen]["p99_ms"], res["alone"]["p99_ms"])
                           for scen, _ in SCENARIOS}
    lines = ["== 6. A SQLite client beside the move: 40 transactions/s, synchronous=FULL, "
             "rollback journal, same filesystem"]
    lines += table(["", "commits", "per s", "p50 ms", "p99 ms", "longest ms", "defragmented in",
                    "extents after", "db whole"], rows)
    lines.append("(p99 against alone: " + ", ".join(
        f"{label} {times(res['p99_vs_alone'][scen])}" for scen, label in SCENARIOS[1:]) +
        "; db whole: PRAGMA integrity_check ok and every committed row there)")
    lines += goals.lines(part)
    return res, lines
