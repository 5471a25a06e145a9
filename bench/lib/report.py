"""The table and the JSON of bench/run.

    report.py FIGURES OUT.json

FIGURES holds one `dotted.key=value` per line, as bench/run measured them;
a value `@PATH` names a JSON file (fio's output, the appender's, defragd's).
This computes the rates, ratios and goals, prints one table (a section per
part, each goal with PASS or MISS) and writes the same figures to OUT.json.
"""
import json
import math
import sys

MIB = 1 << 20
# ext4's longest extent, in blocks: the "ideal" of `defragd check`.
MAX_EXTENT_BLOCKS = 32768


def load_json(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    # fio prefixes "fio: terminating on signal 2" when it was stopped.
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    try:
        return json.loads(text[start:])
    except ValueError:
        return None


def parse_figures(path):
    root = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "=" not in line:
                continue
            key, value = line.split("=", 1)
            if value.startswith("@"):
                parsed = load_json(value[1:])
            else:
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


def mib(nbytes):
    """Bytes as MiB with one decimal, "-" when unknown."""
    return fmt(nbytes / MIB if isinstance(nbytes, (int, float)) else None)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def alone_spread(alones):
    """How far two alone runs differ, against their mean: the machine's own
    noise, beside which a ratio to them is read. None unless there are two."""
    if len(alones) != 2:
        return None
    return ratio(max(alones) - min(alones), sum(alones) / 2)


def fmt(value, digits=1, suffix=""):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def pct(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def times(value):
    return "-" if value is None else f"{value:.2f}x"


def table(headers, rows, first_left=True):
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            parts.append(c.ljust(widths[i]) if i == 0 and first_left else c.rjust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return lines


class Goals:
    def __init__(self):
        self.items = []

    def add(self, part, goal, value, ok, beside="", measured=None, target=None):
        """`ok` None or False is a MISS (None: it could not be measured)."""
        self.items.append(
            {
                "part": part,
                "goal": goal,
                "value": value,
                "measured": measured,
                "target": target,
                "beside": beside,
                "pass": bool(ok),
            }
        )

    def lines(self, part):
        mine = [g for g in self.items if g["part"] == part]
        if not mine:
            return []
        rows = [
            ["  " + g["goal"], g["value"], "PASS" if g["pass"] else "MISS", g["beside"]]
            for g in mine
        ]
        out = ["goals:"]
        for line in table(["", "", "", ""], rows)[1:]:
            out.append(line)
        return out


def move_part(fig, goals):
    move = fig.get("move", {})
    size = move.get("file_bytes") or 0
    bs = move.get("block_size") or 4096
    blocks = math.ceil(size / bs)
    ideal = math.ceil(blocks / MAX_EXTENT_BLOCKS)
    res = {"file_bytes": size, "blocks": blocks, "ideal_extents": ideal,
           "extents_golden": move.get("extents_golden")}

    def tool(name, bytes_moved, seconds):
        m = dict(move.get(name, {}))
        m.pop("result", None)
        m["bytes"] = bytes_moved
        m["seconds"] = seconds
        m["mib_per_s"] = ratio(bytes_moved / MIB if bytes_moved is not None else None, seconds)
        return m

    device = tool("device", size, move.get("device", {}).get("wall_s"))
    kres = move.get("kernel", {}).get("result") or {}
    kernel = tool("kernel", kres.get("bytes"), kres.get("elapsed_s"))
    kernel["call"] = kres
    e4 = tool("e4defrag", size, move.get("e4defrag", {}).get("wall_s"))
    dres = (move.get("defragd", {}).get("result") or {}).get("summary") or {}
    dd = tool("defragd", dres.get("bytes_moved"), move.get("defragd", {}).get("wall_s"))
    dd["summary"] = dres
    for m in (device, kernel, e4, dd):
        m["of_device"] = ratio(m["mib_per_s"], device["mib_per_s"])
        m["of_move_ext"] = ratio(m["mib_per_s"], kernel["mib_per_s"])
    res.update(device=device, kernel=kernel, e4defrag=e4, defragd=dd)

    part = "1. move"
    v = dd["of_move_ext"]
    goals.add(part, "defragd >= 90% of the kernel's MOVE_EXT rate", pct(v),
              v is not None and v >= 0.9, f"e4defrag: {pct(e4['of_move_ext'])}", v, 0.9)
    ok = None if dd["seconds"] is None or e4["seconds"] is None else dd["seconds"] <= e4["seconds"]
    goals.add(part, "defragd wall time <= e4defrag's", f"{fmt(dd['seconds'], 2)} s",
              ok, f"e4defrag: {fmt(e4['seconds'], 2)} s", dd["seconds"], e4["seconds"])
    da, ea = dd.get("extents_after"), e4.get("extents_after")
    goals.add(part, "defragd extents after <= e4defrag's", fmt(da),
              da is not None and ea is not None and da <= ea, f"e4defrag: {fmt(ea)}", da, ea)
    # What the free space allows: no placement of the file has fewer extents.
    free = move.get("free_space") or {}
    allows = free.get("fewest_extents")
    res["free_space"] = free
    target = 2 * max(ideal, allows or ideal)
    goals.add(part, f"defragd extents after <= 2 x max(ideal {ideal}, free space allows "
              f"{fmt(allows)}) ({target})", fmt(da), da is not None and da <= target,
              f"e4defrag: {fmt(ea)}", da, target)

    lines = [f"== 1. Moving one file: {size / MIB:.0f} MiB in {fmt(move.get('extents_golden'))} "
             f"extents (ideal {ideal}, its free space allows {fmt(allows)}), caches dropped "
             f"before each run"]
    rows = []
    for label, m, extents in (
        ("device copy (dd, direct)", device, False),
        ("kernel MOVE_EXT, 1 call", kernel, True),
        ("e4defrag", e4, True),
        ("defragd defrag", dd, True),
    ):
        ext = f"{fmt(m.get('extents_before'))} -> {fmt(m.get('extents_after'))}" if extents else "-"
        score = (f"{fmt(m.get('score_before'))} -> {fmt(m.get('score_after'))}"
                 if label in ("e4defrag", "defragd defrag") else "-")
        cached = fmt(m.get("resident_pages")) if label in ("e4defrag", "defragd defrag") else "-"
        rows.append([label, fmt(m["seconds"], 2), fmt(m["mib_per_s"]), pct(m["of_device"]),
                     pct(m["of_move_ext"]), ext, score, cached,
                     fmt(m.get("data_unchanged")) if extents else "-"])
    lines += table(["", "seconds", "MiB/s", "of copy", "of MOVE_EXT", "extents",
                    "e4defrag score", "cached pages", "data same"], rows)
    lines.append(f"(MOVE_EXT: one call, {fmt(kres.get('donor_extents'))}-extent donor, "
                 f"seconds = the call alone; copy: dd of the fragmented file, 4 MiB direct "
                 f"reads and writes)")
    lines.append(free_space_note(free))
    lines.append("(each run is on a fresh mount: ext4 indexes a block group's free space when "
                 "it first searches it, and all of it about a minute after mounting; until then "
                 "a large fallocate gets small pieces. defragd reads the free space map "
                 "(GETFSMAP), which indexes it all, before its first donor on a filesystem; "
                 "e4defrag does not)")
    roomy = move.get("roomy")
    if roomy:
        res["roomy"] = roomy
        lines += roomy_lines(roomy, ideal, goals, part)
    lines += goals.lines(part)
    return res, lines


def free_space_note(free):
    if not free:
        return "(free space: not measured)"
    return (f"(free space allows: the fewest extents any placement could reach, its largest "
            f"free runs cut at {MAX_EXTENT_BLOCKS} blocks until they hold the file; "
            f"{fmt(free.get('free_runs'))} free runs, the largest "
            f"{fmt(free.get('largest_run_blocks'))} blocks; from dumpe2fs)")


def roomy_lines(roomy, ideal, goals, part):
    """The same file on an image twice as large: free space to spare."""
    allows = (roomy.get("free_space") or {}).get("fewest_extents")
    before = roomy.get("extents_before")
    rows = []
    for name in ("e4defrag", "defragd"):
        m = roomy.get(name) or {}
        rows.append([name, f"{fmt(before)} -> {fmt(m.get('extents_after'))}",
                     fmt(m.get("data_unchanged"))])
    da = (roomy.get("defragd") or {}).get("extents_after")
    ea = (roomy.get("e4defrag") or {}).get("extents_after")
    goals.add(part, f"on a {roomy.get('image_size')} image: defragd extents after <= "
              f"2 x ideal ({2 * ideal})", fmt(da), da is not None and da <= 2 * ideal,
              f"free space allows {fmt(allows)}; e4defrag: {fmt(ea)}", da, 2 * ideal)
    lines = [f"the same recipe on a {roomy.get('image_size')} image (ideal {ideal}, its free "
             f"space allows {fmt(allows)}):"]
    lines += table(["", "extents", "data same"], rows)
    return lines


SCENARIOS = (
    ("alone", "alone"),
    ("e4defrag", "beside e4defrag"),
    ("service", "beside the service"),
    ("service-nopause", "beside it, unthrottled"),
    ("alone-again", "alone, again"),
)


def scenario_result(s):
    """One scenario of part 2: the reader's latencies from fio's JSON, the
    appender's figures, and what bench/run recorded about the defragmenter."""
    fio = s.get("fio") or {}
    job = (fio.get("jobs") or [{}])[0]
    read = job.get("read") or {}
    clat = read.get("clat_ns") or {}
    pcts = clat.get("percentile") or {}
    us = lambda ns: None if ns is None else ns / 1000
    r = {
        "read_iops": read.get("iops"),
        "reads": read.get("total_ios"),
        "load_s": None if read.get("runtime") is None else read["runtime"] / 1000,
        "p50_us": us(pcts.get("50.000000")),
        "p99_us": us(pcts.get("99.000000")),
        "p999_us": us(pcts.get("99.900000")),
        "max_us": us(clat.get("max")),
        "appender": s.get("appender"),
    }
    for k in ("defrag_s", "finished", "finished_under_load", "extents_after",
              "interruptions", "io_some_pct", "not_supported"):
        if k in s:
            r[k] = s[k]
    return r


def impact_part(fig, goals):
    imp = fig.get("impact", {})
    file_mib = (fig.get("move", {}).get("file_bytes") or 0) / MIB
    res = {}
    for scen, _ in SCENARIOS:
        s = imp.get(scen, {})
        r = scenario_result(s)
        samples = s.get("status_samples")
        if isinstance(samples, list) and samples:
            states = {}
            for sample in samples:
                states[sample.get("state")] = states.get(sample.get("state"), 0) + 1
            r["status_samples"] = len(samples)
            r["status_states"] = states
            # The last sample is taken as the load stops (unless done before).
            moved = samples[-1].get("bytes_moved_today")
            r["moved_bytes_under_load"] = (
                fig.get("move", {}).get("file_bytes") if r.get("finished_under_load") else moved)
        res[scen] = r
    # The baseline: the mean of the two alone runs, before and after the others.
    alones = [res[a]["p99_us"] for a in ("alone", "alone-again") if res[a]["p99_us"] is not None]
    base = sum(alones) / len(alones) if alones else None
    res["alone_p99_us"] = base
    res["alone_p99_spread"] = alone_spread(alones)
    for scen, _ in SCENARIOS:
        res[scen]["p99_vs_alone"] = ratio(res[scen]["p99_us"], base)
    stall = lambda s: (res[s]["appender"] or {}).get("max_stall_ms")

    part = "2. impact"
    moved = res["service"].get("moved_bytes_under_load")
    moved_note = "" if moved is None else f"; it moved {moved / MIB:.0f} MiB under load"
    v = res["service"]["p99_vs_alone"]
    goals.add(part, "service: reader p99 <= 1.2 x alone", times(v), v is not None and v <= 1.2,
              f"e4defrag: {times(res['e4defrag']['p99_vs_alone'])}, unthrottled: "
              f"{times(res['service-nopause']['p99_vs_alone'])}{moved_note}", v, 1.2)
    st = stall("service")
    goals.add(part, "service: appender's longest stall <= 100 ms", f"{fmt(st)} ms",
              st is not None and st <= 100,
              f"e4defrag: {fmt(stall('e4defrag'))} ms, unthrottled: {fmt(stall('service-nopause'))} ms"
              f"{moved_note}", st, 100)

    lines = ["== 2. Foreground impact: fio 4k random reads (direct, QD1) + a 4 KiB append+fsync "
             "loop, same filesystem"]
    rows = []
    for scen, label in SCENARIOS:
        r = res[scen]
        app = r["appender"] or {}
        if "defrag_s" in r:
            done = f"{fmt(r['defrag_s'])} s"
            if not r.get("finished"):
                done = f"not done in {fmt(r['defrag_s'], 0)} s"
            elif not r.get("finished_under_load"):
                done += " (after the load)"
        else:
            done = "-"
        moved = r.get("moved_bytes_under_load")
        rows.append([label, fmt(r["load_s"]), fmt(r["read_iops"], 0), fmt(r["p50_us"], 0),
                     fmt(r["p99_us"], 0), fmt(None if r["max_us"] is None else r["max_us"] / 1000),
                     times(r.get("p99_vs_alone")),
                     fmt(app.get("p99_ms")), fmt(app.get("max_stall_ms")), fmt(r.get("io_some_pct")),
                     "-" if moved is None else fmt(moved / MIB, 0), done,
                     fmt(r.get("extents_after"))])
    lines += table(["", "load s", "read IOPS", "p50 us", "p99 us", "max ms", "p99/alone",
                    "append p99 ms", "longest stall ms", "io some %", "MiB moved in load",
                    "defragmented in", "extents after"], rows)
    for scen, label in SCENARIOS:
        r = res[scen]
        if r.get("status_samples"):
            states = ", ".join(f"{k} {100 * v / r['status_samples']:.0f}%" for k, v in
                               sorted(r["status_states"].items(), key=lambda kv: -kv[1]))
            gave_back = r.get("interruptions") or 0
            lines.append(f"({label}: defragctl status under load said {states}; the file was "
                         f"given back {gave_back} time(s) for I/O pressure)")
    size = fig.get("move", {}).get("file_bytes") or 0
    bs = fig.get("move", {}).get("block_size") or 4096
    ideal = math.ceil(math.ceil(size / bs) / MAX_EXTENT_BLOCKS)
    res["ideal_extents"] = ideal
    for scen, label in SCENARIOS:
        after = res[scen].get("extents_after")
        if after is not None and ideal and after > 2 * ideal:
            lines.append(f"NOTE: {label}: the file was left in {after:,} extents, more than "
                         f"2 x ideal ({2 * ideal})")
    if res["alone_p99_spread"] is not None:
        lines.append(f"(p99/alone: against the mean of the two alone runs, {fmt(base, 0)} us; "
                     f"they differ by {pct(res['alone_p99_spread'])}, the noise of this machine)")
        res["noisy"] = res["alone_p99_spread"] > 0.2
        if res["noisy"]:
            lines.append("WARNING: the two alone runs differ by more than 20%: something else "
                         "used the disk or the CPUs; the ratios of this part are not reliable, "
                         "run it again on a quiet machine (bench/run --only 2)")
    lines.append("(io some %: the share of the load's time some task was stalled on I/O, "
                 "/proc/pressure/io, system-wide)")
    lines.append(f"(the load runs until the {file_mib:.0f} MiB file is defragmented, at most a "
                 f"cap; service: default config: it waits while it hears others on the disk "
                 f"(min_mib_per_s 0), else starts at 4 MiB/s and doubles up to 64, halved "
                 f"for every 10 points of I/O pressure above 20%, idle I/O class)")
    lines += goals.lines(part)
    return res, lines


def scan_part(fig, goals):
    scan = fig.get("scan", {})
    files = scan.get("files")
    res = {"files": files, "defragd_s": scan.get("defragd_s"), "e4defrag_s": scan.get("e4defrag_s")}
    res["defragd_files_per_s"] = ratio(files, res["defragd_s"])
    res["e4defrag_files_per_s"] = ratio(files, res["e4defrag_s"])
    res["speedup"] = ratio(res["defragd_files_per_s"], res["e4defrag_files_per_s"])
    part = "3. scan"
    goals.add(part, "defragd check -r >= 2 x e4defrag -c (files/s)", times(res["speedup"]),
              res["speedup"] is not None and res["speedup"] >= 2, "", res["speedup"], 2)
    lines = [f"== 3. Scanning a tree of {fmt(files)} small files, caches dropped before each"]
    lines += table(["", "seconds", "files/s"], [
        ["defragd check -r", fmt(res["defragd_s"], 2), fmt(res["defragd_files_per_s"], 0)],
        ["e4defrag -c", fmt(res["e4defrag_s"], 2), fmt(res["e4defrag_files_per_s"], 0)],
    ])
    lines += goals.lines(part)
    return res, lines


def footprint_part(fig, goals):
    fp = dict(fig.get("footprint", {}))
    kib = lambda k: None if fp.get(k) is None else fp[k] / 1024
    fp["peak_rss_mib"] = kib("peak_rss_kib")
    fp["idle_rss_mib"] = kib("idle_rss_kib")
    part = "4. footprint"
    v = fp["peak_rss_mib"]
    goals.add(part, "peak resident memory crawling <= 32 MiB", f"{fmt(v)} MiB",
              v is not None and v <= 32, "", v, 32)
    v = fp["idle_rss_mib"]
    goals.add(part, "resident memory idle <= 16 MiB", f"{fmt(v)} MiB", v is not None and v <= 16,
              "", v, 16)
    lines = [f"== 4. Service footprint: crawling {fmt(fp.get('files'))} files, then idle "
             f"for {fmt(fp.get('idle_s'))} s"]
    lines += table(["", "seconds", "CPU s", "resident MiB"], [
        ["crawling", fmt(fp.get("crawl_s")), fmt(fp.get("crawl_cpu_s"), 2),
         f"{fmt(fp['peak_rss_mib'])} (peak)"],
        ["idle", fmt(fp.get("idle_s")), fmt(fp.get("idle_cpu_s"), 2), fmt(fp["idle_rss_mib"])],
    ])
    lines.append("(goals from bench/footprint)")
    lines += goals.lines(part)
    return fp, lines


def startup_part(fig, goals):
    """Part 5: the reader's p99 in the service's first seconds, run by run,
    against the quieter of the alone runs around it."""
    st = fig.get("startup", {})
    runs = st.get("runs") or 0
    cap = st.get("finish_cap_s")
    bar = fig.get("move", {}).get("e4defrag", {}).get("extents_after")
    res = {"runs": [], "reader_s": st.get("reader_s"), "finish_cap_s": cap,
           "e4defrag_extents": bar}
    rows = []
    for i in range(1, runs + 1):
        r = st.get(f"run{i}", {})
        p99 = {scen: scenario_result(r.get(scen) or {})["p99_us"]
               for scen in ("alone", "service", "alone-again")}
        alones = [v for v in (p99["alone"], p99["alone-again"]) if v is not None]
        quieter = min(alones) if alones else None
        apart = alone_spread(alones)
        run = {"p99_us": p99, "quieter_alone_p99_us": quieter,
               "p99_vs_alone": ratio(p99["service"], quieter), "alone_runs_apart": apart}
        for k in ("finished", "defrag_s", "extents_after", "interruptions",
                  "service_read_bytes", "service_write_bytes"):
            run[k] = r.get(k)
        run["done_ok"] = bool(run["finished"]) and cap is not None and \
            run["defrag_s"] is not None and run["defrag_s"] <= cap and \
            bar is not None and run["extents_after"] is not None and run["extents_after"] <= bar
        res["runs"].append(run)
        done = f"{fmt(run['defrag_s'])} s" if run["finished"] else \
            f"not done in {fmt(run['defrag_s'], 0)} s"
        rows.append([f"run {i}", fmt(p99["alone"], 0), fmt(p99["service"], 0),
                     fmt(p99["alone-again"], 0), pct(apart), times(run["p99_vs_alone"]),
                     f"{mib(run['service_read_bytes'])} / {mib(run['service_write_bytes'])}", done,
                     fmt(run["extents_after"]), fmt(run["interruptions"])])
    part = "5. first seconds"
    gentle = sum(1 for r in res["runs"] if r["p99_vs_alone"] is not None and r["p99_vs_alone"] <= 1.1)
    worst = max((r["p99_vs_alone"] for r in res["runs"] if r["p99_vs_alone"] is not None),
                default=None)
    goals.add(part, "reader p99 <= 1.1 x the quieter alone run, every run",
              f"{gentle} of {runs}", runs > 0 and gentle == runs, f"worst {times(worst)}",
              worst, 1.1)
    done = sum(1 for r in res["runs"] if r["done_ok"])
    goals.add(part, f"file done within {fmt(cap, 0)} s in <= e4defrag's extents, every run",
              f"{done} of {runs}", runs > 0 and done == runs, f"e4defrag: {fmt(bar)} extents",
              done, runs)
    lines = [f"== 5. The service's first seconds: a {fmt(res['reader_s'])} s fio 4k random "
             f"reader (direct, QD1) that starts with the service, {runs} runs"]
    lines += table(["", "alone p99 us", "with the service", "alone again", "alones apart",
                    "p99/quieter alone",
                    "service read / wrote MiB", "file done in", "extents after", "given back"],
                   rows)
    lines.append("(the service: default config; each run on a fresh copy of the image, caches "
                 "dropped; the reader pinned to one CPU in all three; alones apart: how far the two "
                 "alone runs differ, against their mean, the machine's own noise; "
                 "service read / wrote: "
                 "what the service made the disk read and write while the reader ran, from "
                 "/proc/PID/io; given back: times the move stopped at a block for I/O pressure)")
    lines += goals.lines(part)
    return res, lines


def main():
    figures, out = sys.argv[1], sys.argv[2]
    fig = parse_figures(figures)
    info = fig.get("info", {})
    goals = Goals()
    result = {"info": info}
    fs = info.get("fs") or "ext4"
    lines = [
        f"defragd benchmark ({info.get('mode')}, {fs})   {info.get('date')}",
        f"kernel {info.get('kernel')}   CPU {info.get('cpu_model')}, {info.get('cores')} cores   "
        f"loop devices with direct I/O",
        "",
    ]
    import writer_report  # bench/lib, beside this file
    parts = ((1, "move", move_part), (2, "impact", impact_part),
             (3, "scan", scan_part), (4, "footprint", footprint_part),
             (5, "startup", startup_part), (6, "writer", writer_report.writer_part))
    if fs != "ext4":
        import peers_report  # bench/lib, beside this file
        parts = ((1, "move", peers_report.move_part), (2, "impact", peers_report.impact_part))
    for number, key, fn in parts:
        if str(number) not in str(info.get("parts", "123456")):
            continue
        res, part_lines = fn(fig, goals)
        result[key] = res
        lines += part_lines + [""]
    passed = sum(g["pass"] for g in goals.items)
    if fs != "ext4" and not goals.items:
        lines.append(f"no goals: defragd does not support {fs} yet (its goals come with the backend)")
    else:
        lines.append(f"{passed} of {len(goals.items)} goals PASS")
    result["goals"] = goals.items
    print("\n".join(lines))
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"(figures written to {out})")


if __name__ == "__main__":
    main()
