"""The report of bench/startup-pairs.

    pairs_report.py WORK PAIRS SECONDS

Reads WORK/aN.json (the reader alone) and WORK/bN.json (the reader starting
with the service) for N in 1..PAIRS, fio's JSON, and the service's log,
WORK/service.log, for what the service did meanwhile. The service's effect is the
geometric mean of the pairs' p99 ratios B/A, with a 95% confidence interval
from Student's t. The noise is the spread of those ratios: were the service
without effect, they would spread as much as two alone runs do. From it, a
simulation of part 5's rule (the run beside the service within 1.1x the
quieter of two alone runs) for a service with no effect: how often one run
passes, and 5 of 5.
"""
import json
import math
import random
import statistics
import sys

# Student's t at 97.5% for 1..30 degrees of freedom (95% two-sided).
T975 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04]
RULE = 1.1


def p99_us(path):
    with open(path) as f:
        read = json.load(f)["jobs"][0]["read"]
    return read["clat_ns"]["percentile"]["99.000000"] / 1000


def rule_passes(sigma, draws=200_000):
    """How often a run of a service without effect is within RULE of the
    quieter of two alone runs, each run's log p99 spread by sigma."""
    rng = random.Random(1)
    margin = math.log(RULE)
    hits = sum(
        rng.gauss(0, sigma) <= margin + min(rng.gauss(0, sigma), rng.gauss(0, sigma))
        for _ in range(draws)
    )
    return hits / draws


def main():
    work, pairs, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rows = [(p99_us(f"{work}/a{i}.json"), p99_us(f"{work}/b{i}.json")) for i in range(1, pairs + 1)]
    logs = [math.log(b / a) for a, b in rows]
    print(f"The reader's p99 (fio 4k random reads, direct, QD1, {seconds} s), alone (A) and")
    print("starting with the default service (B), pairs on one copy, order alternating:")
    print(f"{'pair':>5} {'order':>6} {'A us':>8} {'B us':>8} {'B/A':>7}")
    for i, (a, b) in enumerate(rows, 1):
        print(f"{i:>5} {'A B' if i % 2 else 'B A':>6} {a:8.1f} {b:8.1f} {b / a:7.3f}")
    with open(f"{work}/service.log") as f:
        log = f.read()
    print(f"the service started its move in {log.count(' INFO defragmenting ')} of {pairs} B runs "
          f"and was stopped in it {log.count(' stopped at block ')} times")
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        print(f"the service's effect on the p99: x{math.exp(mean):.3f} (one pair: no interval)")
        return
    spread = statistics.stdev(logs)
    half = T975[min(len(logs) - 1, len(T975)) - 1] * spread / math.sqrt(len(logs))
    print(f"the service's effect on the p99: x{math.exp(mean):.3f} "
          f"(95% confidence: x{math.exp(mean - half):.3f} to x{math.exp(mean + half):.3f})")
    print(f"two runs of the reader differ by {100 * (math.exp(spread) - 1):.0f}% "
          "(the standard deviation of the pairs' ratios)")
    one = rule_passes(spread / math.sqrt(2))
    print(f"part 5's rule (B <= {RULE}x the quieter of two alone runs), for a service without "
          f"effect at this noise: one run passes {100 * one:.0f}% of the time, 5 of 5 {100 * one ** 5:.0f}%")


if __name__ == "__main__":
    main()
