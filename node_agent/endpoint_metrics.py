"""What a deployment's endpoint proxy counts: requests by status class, the ones refused for
their key, requests in flight (an open WebSocket is one), and the latency (to the response's
first byte) of the requests the model answered in the last window. Counts only grow;
latencies are kept for one window (bounded: the newest LATENCY_SAMPLES), which a report closes
when the model answered something in it. A report with nothing answered since the last one
(e.g. sent because a request's connection closed) repeats the last window's percentiles: an
idle minute must not erase the latency a user is looking at."""

import math
import threading
import time
from collections import deque

LATENCY_SAMPLES = 10_000  # per window: enough for a p99, bounded memory
_PERCENTILE_FIELDS = {f"latency_p{q}_ms": q for q in (50, 95, 99)}


class EndpointMetrics:
    def __init__(self):
        # The proxy's loop updates, the agent's reporter reads: one lock, held for a moment.
        self._lock = threading.Lock()
        self.requests_total = 0
        self.by_class = dict.fromkeys((2, 3, 4, 5), 0)
        self.unauthorized = 0
        self.in_flight = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._window_start = time.monotonic()
        self._last_window = {"window_s": 0.0} | dict.fromkeys(_PERCENTILE_FIELDS)
        # Wall clock, so the control plane can tell these counts (from zero) from an earlier
        # agent's: a later start means a new count, not a late report.
        self.counting_since = time.time()

    def arrived(self) -> None:
        with self._lock:
            self.requests_total += 1
            self.in_flight += 1

    def answered(
        self, status: int, latency_ms: float | None = None, unauthorized: bool = False
    ) -> None:
        """A status is known; `latency_ms` for answers the model gave (not the proxy's own)."""
        with self._lock:
            if status // 100 in self.by_class:
                self.by_class[status // 100] += 1
            self.unauthorized += unauthorized
            if latency_ms is not None:
                self._latencies.append(latency_ms)

    def done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def counts(self) -> tuple:
        """What a report says beyond latency: a report is due when this changed."""
        with self._lock:
            return (self.requests_total, *self.by_class.values(), self.unauthorized, self.in_flight)

    def report(self) -> dict:
        """The fields of a DeploymentMetrics; starts the next latency window if this one had
        answers, else repeats the last window's."""
        now = time.monotonic()
        with self._lock:
            latencies = sorted(self._latencies)
            if latencies:
                self._latencies = deque(maxlen=LATENCY_SAMPLES)
                window_s, self._window_start = now - self._window_start, now
                self._last_window = {"window_s": round(window_s, 3)} | {
                    field: _percentile(latencies, q) for field, q in _PERCENTILE_FIELDS.items()
                }
            return {
                "requests_total": self.requests_total,
                "counting_since": round(self.counting_since, 3),
                **{f"status_{c}xx": n for c, n in self.by_class.items()},
                "unauthorized": self.unauthorized,
                "in_flight": self.in_flight,
                **self._last_window,
            }


def _percentile(ordered: list[float], q: int) -> float | None:
    """Nearest rank: the smallest value at least q% of the samples do not exceed."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 3)
