"""The stall bookkeeping shared by bench/run's foreground writers
(appender.py, sqlite_writer.py): every timed operation's duration, and the
three longest with the wall-clock time they began (UTC, as the service's
log lines are stamped), to find what caused them."""
import datetime
import heapq


class Stalls:
    def __init__(self):
        self.times = []
        self.worst = []  # a min-heap of (seconds, wall-clock start), the longest few

    def add(self, took, wall):
        self.times.append(took)
        heapq.heappush(self.worst, (took, wall))
        if len(self.worst) > 3:
            heapq.heappop(self.worst)

    def summary(self, elapsed):
        """Count, rate over `elapsed` seconds, p50/p99/longest in ms, and
        the longest few."""
        times = sorted(self.times)
        pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3 if times else None
        return {
            "count": len(times),
            "per_s": len(times) / elapsed if elapsed > 0 else None,
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "max_stall_ms": pick(1.0),
            "longest": [
                {
                    "ms": took * 1e3,
                    "at": datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(),
                }
                for took, wall in sorted(self.worst, reverse=True)
            ],
        }
