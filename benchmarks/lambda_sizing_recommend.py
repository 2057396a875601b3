"""benchmarks/lambda_sizing.py's recommendations: MemorySize and Timeout from the measurements,
the table it prints and infra/sizing.json it writes (read by prism/dev/merge_template.py)."""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from lambda_sizing_harness import REPO, Measurement

SIZING_FILE = REPO / "infra" / "sizing.json"
CHALICE_CONFIG = REPO / ".chalice" / "config.json"
# Functions not measured at a load (their work does not grow with the data): sized from the
# import-only peak, unless a scenario measures them (SweepNodes: with no nodes).
NOT_LOAD_DEPENDENT = [
    "WebsocketConnect",
    "WebsocketMessage",
    "WebsocketDisconnect",
    "SweepNodes",
    "CloudLaunch",
    "CloudPoll",
    "CloudCheckHealth",
    "CloudMarkRunning",
    "CloudProvisionFailed",
    "CloudTerminate",
    "CloudFinishTeardown",
    "CloudTeardownUnconfirmed",
]


# --- the recommendations ---------------------------------------------------------------------


def memory_size(peak_mb: float) -> int:
    """1.5x the peak for bigger pages and batches than measured; 64 MB steps; at least 256 MB,
    because Lambda's CPU share scales with memory (a full vCPU at 1,769 MB): at 128 MB a
    function gets ~7% of a core and spends seconds just importing boto3, pydantic and chalice."""
    return max(256, math.ceil(peak_mb * 1.5 / 64) * 64)


def timeout_s(duration_s: float) -> int:
    """5x the measured duration: Lambda at these sizes has a fraction of this machine's core
    (see the cpu column) and real AWS calls wait on the network; at least 60 s, so a cold start
    plus a throttled AWS call never times out; at most 900 s, Lambda's limit."""
    return min(900, max(60, math.ceil(duration_s * 5)))


def configured_timeouts() -> dict[str, int]:
    """lambda_timeout per function in .chalice/config.json (the largest over stages): set for
    worst cases this benchmark does not produce (a provider that hangs until its timeouts), so
    the sizing never lowers them."""
    config = json.loads(CHALICE_CONFIG.read_text())
    found: dict[str, int] = {}
    for stage in config.get("stages", {}).values():
        for name, settings in stage.get("lambda_functions", {}).items():
            if "lambda_timeout" in settings:
                found[name] = max(found.get(name, 0), settings["lambda_timeout"])
    return found


def metering_visibility_timeout() -> int | None:
    """The metering queue's VisibilityTimeout in infra/resources.json: Lambda refuses an SQS
    trigger whose function Timeout is longer."""
    resources = json.loads((REPO / "infra" / "resources.json").read_text())["Resources"]
    for queue in resources.values():
        if queue.get("Type") != "AWS::SQS::Queue":
            continue
        name = queue["Properties"].get("QueueName", "")
        if str(name.get("Fn::Sub") if isinstance(name, dict) else name).endswith("-metering"):
            return queue["Properties"].get("VisibilityTimeout")
    return None


def chalice_name(logical_id: str) -> str:
    """MeterTick -> meter_tick; APIHandler -> api_handler (Chalice's own names)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", logical_id.replace("API", "Api")).lower()


# --- the table and infra/sizing.json -------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    memory_size: int
    timeout: int
    basis: str  # how the two figures were reached
    measured: str  # the figure behind them, for infra/sizing.json


def recommend_measured(rows: list[Measurement], configured: int, today: str) -> Recommendation:
    """MemorySize from the largest peak of any row (a warm container keeps what it grew to);
    Timeout from the slowest single invocation."""
    peak_row = max(rows, key=lambda r: r.peak_mb)
    slowest = max((r for r in rows if r.one_invocation), key=lambda r: r.duration_s)
    import_mb = max(r.import_mb for r in rows)
    memory, timeout = memory_size(peak_row.peak_mb), timeout_s(slowest.duration_s)
    basis = (
        f"{peak_row.peak_mb:.0f} MB x 1.5 -> {memory}; {slowest.duration_s:.1f} s x 5 -> {timeout}"
    )
    if configured > timeout:
        basis += f", config's {configured} s kept"
    size = slowest.size if peak_row is slowest else f"{slowest.size}; peak: {peak_row.size}"
    measured = (
        f"peak {peak_row.peak_mb:.0f} MB (import-only {import_mb:.0f} MB), "
        f"{slowest.duration_s:.1f} s for {size} (benchmarks/lambda_sizing.py, {today})"
    )
    return Recommendation(memory, max(timeout, configured), basis, measured)


def recommend_import_only(import_mb: float, configured: int, today: str) -> Recommendation:
    memory, timeout = memory_size(import_mb), max(60, configured)
    basis = f"import-only {import_mb:.0f} MB x 1.5 -> {memory}; " + (
        f"config's {configured} s kept" if configured > 60 else "60 s floor"
    )
    measured = (
        f"not load-dependent: import-only peak {import_mb:.0f} MB "
        f"(benchmarks/lambda_sizing.py, {today})"
    )
    return Recommendation(memory, timeout, basis, measured)


def recommend(rows: list[Measurement], today: str) -> dict[str, Recommendation]:
    configured = configured_timeouts()
    by_function: dict[str, list[Measurement]] = {}
    for row in rows:
        by_function.setdefault(row.function, []).append(row)
    found = {
        function: recommend_measured(group, configured.get(chalice_name(function), 0), today)
        for function, group in by_function.items()
    }
    visibility = metering_visibility_timeout()
    if "MeterWorker" in found and visibility and found["MeterWorker"].timeout > visibility:
        print(f"WARNING: MeterWorker's Timeout is over the queue's VisibilityTimeout {visibility}")
    import_mb = max(r.import_mb for r in rows)  # one package: every function imports it all
    for function in NOT_LOAD_DEPENDENT:
        if function not in found:
            timeout = configured.get(chalice_name(function), 0)
            found[function] = recommend_import_only(import_mb, timeout, today)
    return found


def print_table(rows: list[Measurement], recommendations: dict[str, Recommendation]) -> None:
    header = (
        f"{'function':<25}{'size':<72}{'import':>7}{'import-only':>12}{'peak':>7}"
        f"{'duration':>9}{'cpu':>7}{'MemorySize':>11}{'Timeout':>8}  basis"
    )
    print("\n" + header)
    print(f"{'':<25}{'':<72}{'s':>7}{'RSS MB':>12}{'RSS MB':>7}{'s':>9}{'s':>7}{'MB':>11}{'s':>8}")
    shown = set()
    for row in rows:
        rec = recommendations[row.function]
        first = row.function not in shown
        shown.add(row.function)
        print(
            f"{row.function:<25}{row.size[:71]:<72}{row.import_s:>7.2f}{row.import_mb:>12.0f}"
            f"{row.peak_mb:>7.0f}{row.duration_s:>9.2f}{row.cpu_s:>7.2f}"
            + (f"{rec.memory_size:>11}{rec.timeout:>8}  {rec.basis}" if first else "")
        )
    for function in NOT_LOAD_DEPENDENT:
        if function in shown:
            continue
        rec = recommendations[function]
        print(
            f"{function:<25}{'not load-dependent (import-only)':<72}{'':>7}{'':>12}{'':>7}"
            f"{'':>9}{'':>7}{rec.memory_size:>11}{rec.timeout:>8}  {rec.basis}"
        )


def write_sizing(recommendations: dict[str, Recommendation], path: Path) -> None:
    """Overwrites the numbers of every function named; keeps anything else already there."""
    sizing = json.loads(path.read_text()) if path.exists() else {}
    for function, rec in recommendations.items():
        entry = sizing.setdefault(function, {})
        entry |= {"MemorySize": rec.memory_size, "Timeout": rec.timeout, "measured": rec.measured}
    path.write_text(json.dumps(sizing, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
