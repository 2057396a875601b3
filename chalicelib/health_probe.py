"""The health probe of a model's endpoint: the node agent's supervision and the control plane's
cloud health checks both use this one, so an answer is healthy or not the same everywhere."""

import time
from dataclasses import dataclass

import requests

# As Kubernetes' httpGet probe reads an answer: 2xx and 3xx are healthy.
HEALTHY_STATUSES = range(200, 400)


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    latency_ms: float | None  # until the answer's headers; None when nothing answered
    detail: str | None = None  # why it is unhealthy: "HTTP 503", "ConnectTimeout", ...


def probe(url: str, timeout_s: float = 2.0) -> ProbeResult:
    """One GET. A redirect is the answer, never followed (a model must not steer our requests
    elsewhere), and the body is never read (a health path that streams must not hold a probe)."""
    started = time.perf_counter()
    try:
        with requests.get(url, timeout=timeout_s, allow_redirects=False, stream=True) as answer:
            status = answer.status_code
    except requests.RequestException as exc:
        return ProbeResult(False, None, type(exc).__name__)
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    if status in HEALTHY_STATUSES:
        return ProbeResult(True, latency_ms)
    return ProbeResult(False, latency_ms, f"HTTP {status}")
