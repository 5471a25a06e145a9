"""The table and the JSON of bench/tracking.

    tracking_report.py FIGURES OUT.json

FIGURES holds one `dotted.key=value` per line (a value is JSON, or text),
as bench/tracking measured them. This computes the ratios and goals,
prints one table (each goal with PASS or MISS) and writes the figures,
with the goals, to OUT.json.
"""
import json
import sys

MIB = 1 << 20
# Goals.
COST_MIN = 0.97  # writer's throughput beside the service / alone
FLOOD_CPU_MAX_PCT = 5.0  # % of one core
FLOOD_RSS_MAX_KIB = 64 * 1024
# "Independent of the number of directories": the big filesystem's figure
# within this much of the small one's.
SCALE_SLACK_S = 1.0


def parse_figures(path):
    root = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
            node = root
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = parsed
    return root


def verdict(ok):
    return "PASS" if ok else "MISS"


def main():
    figures = parse_figures(sys.argv[1])
    rows = []  # (what, figure, goal, verdict)
    goals = {}
    info = figures.get("info", {})

    cost = figures.get("cost", {})
    names = {
        "randwrite": "fio 4k random writes, fsync each",
        "seqwrite": "fio 1 MiB buffered sequential writes, end_fsync",
        "overwrite": "fio 4k random overwrites of a cached file, no fsync",
    }
    for w in ("randwrite", "seqwrite", "overwrite"):
        c = cost.get(w)
        if not c:
            continue
        r = c["with_median"] / c["alone_median"] if c["alone_median"] else None
        c["ratio"] = round(r, 4) if r is not None else None
        # Each run's pair (alone and beside, one right after the other):
        # the spread of these shows how much of the difference is noise.
        pairs = sorted(b / a for a, b in zip(c["alone_bw_bytes"], c["with_bw_bytes"]) if a)
        c["pair_ratios"] = [round(p, 4) for p in pairs]
        spread = f"; run by run {pairs[0] * 100:.0f}–{pairs[-1] * 100:.0f}%" if pairs else ""
        def mib(b):
            return f"{b / MIB:.2f}" if b < 10 * MIB else f"{b / MIB:.0f}"
        alone = ", ".join(mib(b) for b in c["alone_bw_bytes"])
        beside = ", ".join(mib(b) for b in c["with_bw_bytes"])
        ok = r is not None and r >= COST_MIN
        goals[f"cost.{w}"] = ok
        rows.append((
            f"{names[w]} (MiB/s, median of {cost['runs']} × {cost['fio_s']} s)",
            f"alone {mib(c['alone_median'])} [{alone}]; beside {mib(c['with_median'])} [{beside}]: {r * 100:.1f}%{spread}",
            f"≥ {COST_MIN * 100:.0f}%",
            verdict(ok),
        ))

    flood = figures.get("flood")
    if flood:
        w = flood["writer"]
        ok_cpu = flood["cpu_pct"] <= FLOOD_CPU_MAX_PCT
        ok_rss = flood["rss_peak_kib"] <= FLOOD_RSS_MAX_KIB
        goals["flood.cpu"] = ok_cpu
        goals["flood.rss"] = ok_rss
        rows.append((
            f"flood: {w['writes_per_s']:,.0f} writes/s to 1,000 files for {w['seconds']:.0f} s: service CPU",
            f"{flood['cpu_s']:.2f} s = {flood['cpu_pct']:.2f}% of one core "
            f"(then {flood['after_cpu_s']:.2f} s in the {flood['after_s']} s after)",
            f"≤ {FLOOD_CPU_MAX_PCT:.0f}%",
            verdict(ok_cpu),
        ))
        rows.append((
            "flood: service RSS before / peak / after",
            f"{flood['rss_before_kib'] / 1024:.1f} / {flood['rss_peak_kib'] / 1024:.1f} / {flood['rss_after_kib'] / 1024:.1f} MiB",
            f"peak ≤ {FLOOD_RSS_MAX_KIB // 1024} MiB",
            verdict(ok_rss),
        ))

    scale = figures.get("scale", {})
    small, big = scale.get("small"), scale.get("big")
    if small and big:
        def label(s):
            return f"{s['files']:,} files / {s['dirs']:,} dirs"
        ok_start = big["tracking_s"] <= small["tracking_s"] + SCALE_SLACK_S
        found = [s.get("found_s") for s in (small, big)]
        ok_found = (
            None not in found
            and big["found_by_tracking"] and small["found_by_tracking"]
            and found[1] <= found[0] + SCALE_SLACK_S
        )
        goals["scale.tracking_start"] = ok_start
        goals["scale.found"] = ok_found
        rows.append((
            "service start → tracking the whole filesystem",
            f"{label(big)}: {big['tracking_s']:.3f} s; {label(small)}: {small['tracking_s']:.3f} s",
            f"big ≤ small + {SCALE_SLACK_S:.0f} s",
            verdict(ok_start),
        ))

        def fmt_found(s):
            if s.get("found_s") is None:
                return "not found in 60 s"
            how = "by tracking" if s["found_by_tracking"] else "BY THE CRAWL"
            tries = s.get("target_tries", 1)
            again = f", written {tries} times to fragment it" if tries > 1 else ""
            return f"{s['found_s']:.2f} s ({s['target_extents']} extents{again}, {how})"
        rows.append((
            "last write of a fragmented file deep in the tree → its move (quiet period 2 s)",
            f"{label(big)}: {fmt_found(big)}; {label(small)}: {fmt_found(small)}",
            f"by tracking; big ≤ small + {SCALE_SLACK_S:.0f} s",
            verdict(ok_found),
        ))
        rows.append((
            "making the tree (python os.mkdir/os.open)",
            f"{label(big)}: {big['make_s']} s; {label(small)}: {small['make_s']} s",
            "",
            "",
        ))

    figures["goals"] = goals
    with open(sys.argv[2], "w") as f:
        json.dump(figures, f, indent=2)
        f.write("\n")

    print(f"bench/tracking ({info.get('mode')} mode), {info.get('date')}, kernel {info.get('kernel')}, "
          f"{info.get('cores')} cores")
    print()
    print("| measure | figure | goal | |")
    print("|---|---|---|---|")
    for what, fig, goal, v in rows:
        print(f"| {what} | {fig} | {goal} | {v} |")
    print()
    passed = sum(1 for v in goals.values() if v)
    print(f"{passed} of {len(goals)} goals; figures in {sys.argv[2]}")


if __name__ == "__main__":
    main()
