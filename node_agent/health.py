"""The pure bookkeeping of consecutive failed health probes (the probe: chalicelib.health_probe)."""

from dataclasses import dataclass

from chalicelib.health_probe import ProbeResult
from chalicelib.protocol import UNHEALTHY_AFTER


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
