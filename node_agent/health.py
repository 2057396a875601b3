"""Health probes: one HTTP GET, and the pure bookkeeping of consecutive failures."""

import time
from dataclasses import dataclass

import requests

from chalicelib.protocol import UNHEALTHY_AFTER


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    latency_ms: float | None
    detail: str | None = None


def probe(url: str, timeout: float = 2.0) -> ProbeResult:
    started = time.perf_counter()
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return ProbeResult(False, None, type(exc).__name__)
    latency = round((time.perf_counter() - started) * 1000, 2)
    if 200 <= response.status_code < 300:
        return ProbeResult(True, latency)
    return ProbeResult(False, latency, f"HTTP {response.status_code}")


@dataclass
class HealthTracker:
    """Counts consecutive failures; says when something worth reporting changed."""

    consecutive_failures: int = 0
    healthy: bool = True

    def observe(self, result: ProbeResult) -> bool:
        """Record a probe; True when the server should hear about it (every failure until
        unhealthy, and the first success after failures)."""
        if result.healthy:
            changed = self.consecutive_failures > 0
            self.consecutive_failures = 0
            self.healthy = True
            return changed
        self.consecutive_failures += 1
        self.healthy = self.consecutive_failures < UNHEALTHY_AFTER
        return self.consecutive_failures <= UNHEALTHY_AFTER
