"""The sections of bench/run --fs xfs|btrfs (bench/lib/peers.sh): defragd
beside the filesystem's own defragmenter (xfs_fsr; btrfs filesystem
defragment), imported by report.py, whose helpers it uses.

Where defragd does not support the filesystem yet, its rows say so and its
goals are left out (not counted as MISS): the peer's figures are the point
until the backend lands.
"""
import math

from report import MIB, alone_spread, fmt, pct, ratio, scenario_result, table, times

# The longest extent, in bytes, by filesystem: XFS's is 2^21 blocks (8 GiB
# with 4 KiB blocks), btrfs's BTRFS_MAX_EXTENT_SIZE 128 MiB.
MAX_EXTENT_BYTES = {"xfs": (1 << 21) * 4096, "btrfs": 128 * MIB}
PEER = {"xfs": "xfs_fsr", "btrfs": "btrfs-defrag"}
PEER_LABEL = {"xfs": "xfs_fsr FILE", "btrfs": "btrfs filesystem defragment -f"}
NOT_SUPPORTED = "defragd: not supported yet"


def fs_of(fig):
    return (fig.get("info") or {}).get("fs") or "ext4"


def move_part(fig, goals):
    fs = fs_of(fig)
    peer = PEER[fs]
    move = fig.get("move", {})
    size = move.get("file_bytes") or 0
    ideal = max(1, math.ceil(size / MAX_EXTENT_BYTES[fs]))
    res = {"fs": fs, "peer": peer, "file_bytes": size, "ideal_extents": ideal,
           "extents_golden": move.get("extents_golden"),
           "own_extents_golden": move.get("own_extents_golden"),
           "shared_file_bytes": move.get("shared_file_bytes"),
           "shared_extents_golden": move.get("shared_extents_golden")}
    rows = []
    device_rate = None
    for name, label in (("device", "device copy (dd, direct)"), (peer, PEER_LABEL[fs]),
                        ("defragd", "defragd defrag")):
        m = dict(move.get(name, {}))
        result = m.pop("result", None)
        m["seconds"] = m.get("wall_s")
        if m["seconds"] is not None and m.get("sync_s") is not None:
            m["durable_seconds"] = m["seconds"] + m["sync_s"]
        moved = size
        if name == "defragd":
            # What it says it moved (0 when it skipped the file), as on ext4.
            m["summary"] = (result or {}).get("summary") or {}
            moved = m["summary"].get("bytes_moved")
        m["mib_per_s"] = ratio(None if moved is None else moved / MIB, m["seconds"])
        if name == "device":
            device_rate = m["mib_per_s"]
        m["of_device"] = ratio(m["mib_per_s"], device_rate)
        if m.get("exclusive_after") is not None and m.get("exclusive_before") is not None:
            m["exclusive_added"] = m["exclusive_after"] - m["exclusive_before"]
        res[name] = m
        if m.get("not_supported"):
            rows.append([label, NOT_SUPPORTED] + [""] * (9 if fs == "btrfs" else 7))
            continue
        tool = name != "device"
        row = [label, fmt(m["seconds"], 2), fmt(m.get("durable_seconds"), 2),
               fmt(m["mib_per_s"]), pct(m["of_device"]),
               f"{fmt(m.get('extents_before'))} -> {fmt(m.get('extents_after'))}" if tool else "-"]
        if fs == "xfs":
            row.append(f"{fmt(m.get('own_extents_before'))} -> {fmt(m.get('own_extents_after'))}"
                       if tool else "-")
        else:
            added = m.get("exclusive_added")
            row.append(f"{fmt(m.get('shared_extents_before'))} -> "
                       f"{fmt(m.get('shared_extents_after'))}" if tool else "-")
            row.append("-" if not tool or added is None else fmt(added / MIB))
            row.append(fmt(m.get("snapshot_unchanged")) if tool else "-")
        row += [fmt(m.get("resident_pages")) if tool else "-",
                fmt(m.get("data_unchanged")) if tool else "-"]
        rows.append(row)
    headers = ["", "seconds", "on disk s", "MiB/s", "of copy", "extents (filefrag)"]
    headers += (["extents (xfs_bmap)"] if fs == "xfs"
                else ["snapshotted file: extents", "exclusive MiB added", "snapshot same"])
    headers += ["cached pages", "data same"]

    part = "1. move"
    d, p = res["defragd"], res[peer]
    if not d.get("not_supported"):
        ok = None if d["seconds"] is None or p["seconds"] is None else d["seconds"] <= p["seconds"]
        goals.add(part, f"defragd wall time <= {peer}'s", f"{fmt(d['seconds'], 2)} s", ok,
                  f"{peer}: {fmt(p['seconds'], 2)} s", d["seconds"], p["seconds"])
        dd, pd = d.get("durable_seconds"), p.get("durable_seconds")
        goals.add(part, f"defragd time to the data on disk <= {peer}'s", f"{fmt(dd, 2)} s",
                  None if dd is None or pd is None else dd <= pd,
                  f"{peer}: {fmt(pd, 2)} s", dd, pd)
        da, pa = d.get("extents_after"), p.get("extents_after")
        goals.add(part, f"defragd extents after <= {peer}'s", fmt(da),
                  da is not None and pa is not None and da <= pa, f"{peer}: {fmt(pa)}", da, pa)
        if fs == "btrfs":
            dx, px = d.get("exclusive_added"), p.get("exclusive_added")
            goals.add(part, f"defragd exclusive bytes added <= {peer}'s",
                      f"{fmt(None if dx is None else dx / MIB)} MiB",
                      dx is not None and px is not None and dx <= px,
                      f"{peer}: {fmt(None if px is None else px / MIB)} MiB", dx, px)

    free = move.get("free_space") or {}
    res["free_space"] = free
    allows = f", its free space allows {fmt(free.get('fewest_extents'))}" if free else ""
    lines = [f"== 1. Moving one file on {fs}: {size / MIB:.0f} MiB in "
             f"{fmt(move.get('extents_golden'))} extents (ideal {ideal}{allows}), caches "
             f"dropped before each run"]
    lines += table(headers, rows)
    lines.append("(on disk s: the seconds to the command's return plus those of an fsync "
                 "of the file right after it (`sync FILE`), which writes what the command left "
                 "in flight; defragd fsyncs before it returns)")
    if fs == "btrfs":
        shared = (move.get("shared_file_bytes") or 0) / MIB
        lines.append(f"(snapshotted file: after the timed run, each tool on shared/file, "
                     f"{shared:.0f} MiB in {fmt(move.get('shared_extents_golden'))} extents, "
                     f"every one shared with a read-only snapshot of shared/; exclusive MiB "
                     f"added: `btrfs filesystem du -s` of shared/ after minus before, what the "
                     f"run unshared; snapshot same: the file and the snapshot's copy unchanged)")
    else:
        lines.append("(xfs_bmap counts every extent record; filefrag merges records that touch "
                     "on disk)")
        if free:
            lines.append(f"(free space allows: the fewest extents any placement could reach, "
                         f"its largest free runs taken until they hold the file; "
                         f"{fmt(free.get('free_runs'))} free runs, the largest "
                         f"{fmt(free.get('largest_run_blocks'))} blocks; from xfs_db freesp)")
    lines += goals.lines(part)
    return res, lines


def impact_part(fig, goals):
    fs = fs_of(fig)
    peer = PEER[fs]
    scenarios = (("alone", "alone"), (peer, f"beside {peer}"),
                 ("service", "beside the service"), ("alone-again", "alone, again"))
    imp = fig.get("impact", {})
    res = {scen: scenario_result(imp.get(scen, {})) for scen, _ in scenarios}
    alones = [res[a]["p99_us"] for a in ("alone", "alone-again") if res[a]["p99_us"] is not None]
    base = sum(alones) / len(alones) if alones else None
    res["alone_p99_us"] = base
    for scen, _ in scenarios:
        res[scen]["p99_vs_alone"] = ratio(res[scen]["p99_us"], base)
    stall = lambda s: (res[s]["appender"] or {}).get("max_stall_ms")

    part = "2. impact"
    svc = res["service"]
    if not svc.get("not_supported"):
        v = svc["p99_vs_alone"]
        goals.add(part, "service: reader p99 <= 1.2 x alone", times(v),
                  v is not None and v <= 1.2, f"{peer}: {times(res[peer]['p99_vs_alone'])}", v, 1.2)
        st = stall("service")
        goals.add(part, "service: appender's longest stall <= 100 ms", f"{fmt(st)} ms",
                  st is not None and st <= 100, f"{peer}: {fmt(stall(peer))} ms", st, 100)

    lines = [f"== 2. Foreground impact on {fs}: fio 4k random reads (direct, QD1) + a 4 KiB "
             f"append+fsync loop, same filesystem"]
    rows = []
    for scen, label in scenarios:
        r = res[scen]
        if r.get("not_supported"):
            rows.append([label, NOT_SUPPORTED] + [""] * 8)
            continue
        app = r["appender"] or {}
        done = "-"
        if "defrag_s" in r:
            done = f"{fmt(r['defrag_s'])} s"
            if not r.get("finished"):
                done = f"not done in {fmt(r['defrag_s'], 0)} s"
            elif not r.get("finished_under_load"):
                done += " (after the load)"
        rows.append([label, fmt(r["load_s"]), fmt(r["read_iops"], 0), fmt(r["p99_us"], 0),
                     times(r.get("p99_vs_alone")), fmt(app.get("p99_ms")),
                     fmt(app.get("max_stall_ms")), fmt(r.get("io_some_pct")), done,
                     fmt(r.get("extents_after"))])
    lines += table(["", "load s", "read IOPS", "p99 us", "p99/alone", "append p99 ms",
                    "longest stall ms", "io some %", "defragmented in", "extents after"], rows)
    spread = alone_spread(alones)
    if spread is not None:
        res["alone_p99_spread"] = spread
        lines.append(f"(p99/alone: against the mean of the two alone runs, {fmt(base, 0)} us; "
                     f"they differ by {pct(spread)}, the noise of this machine)")
        res["noisy"] = spread > 0.2
        if res["noisy"]:
            lines.append(f"WARNING: the two alone runs differ by more than 20%: something else "
                         f"used the disk or the CPUs; the ratios of this part are not reliable, "
                         f"run it again on a quiet machine (bench/run --fs {fs} --only 2)")
    lines.append(f"(beside {peer}: the load runs its full alone time around the tool, which may "
                 f"be done within a second; beside the service: until the file is "
                 f"defragmented, as on ext4)")
    lines += goals.lines(part)
    return res, lines
