"""Lambda sizing: peak memory and duration of one cold invocation of each load-dependent function.

Each measurement is a FRESH Python process that imports `app` and calls the handler the way a
cold Lambda container does (the handler string app.<name>, a Lambda-shaped event and context),
against a moto server (`python -m prism.dev.moto_server`) seeded with:

- MeterTick: N billable (+ M stopped) deployments, one tick;
- MeterWorker: the largest batch the SQS trigger delivers (10 messages of 100 deployments), then
  the rest of the queue in the same warm process (the whole drain, and whether memory grows);
- CheckCloudHealth (the tick) / HealthWorker (one message) / ReapCloud: K running RunPod
  deployments with their pods on the fake RunPod
  (prism/dev/fakes), their endpoints on one local HTTP server that answers every path;
- APIHandler: a list page (limit 100) of an owner with L deployments, and a create;
- SweepNodes with no nodes: what any handler adds to the import by making its AWS clients.

Peak RSS is ru_maxrss after the handler returns; "import-only" is ru_maxrss right after
`import app` (the RSS then: an import only grows), so the difference is the handler's own cost.
Durations include moto's own slowness (it walks a whole table for an index Query); the cpu
column is the function's own work, the figure to scale by Lambda's CPU share. Prints a table
with the recommended MemorySize and Timeout; --write puts them in infra/sizing.json. The full
sizes take ~3-4 minutes on 2 cores, --quick ~15 s.

    .venv/bin/python benchmarks/lambda_sizing.py [--quick] [--write]
"""

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prism.dev.events import scheduled_event, sqs_record

REPO = Path(__file__).resolve().parents[1]
STAGE = "sizing"
SIZING_FILE = REPO / "infra" / "sizing.json"
CHALICE_CONFIG = REPO / ".chalice" / "config.json"
DEPLOYMENTS = "/api/v1/compute/deployments"
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


@dataclass(frozen=True)
class Sizes:
    billable: int  # deployments the metering tick and worker charge
    stopped: int  # deployments that are over: never read by the tick (a sparse index)
    cloud: int  # running cloud deployments, each with a pod on the fake RunPod
    listed: int  # deployments of the owner whose list page the API serves


FULL = Sizes(billable=10_000, stopped=50_000, cloud=1_000, listed=1_000)
QUICK = Sizes(billable=500, stopped=1_000, cloud=50, listed=100)


@dataclass(frozen=True)
class Measurement:
    function: str  # the CloudFormation logical id
    size: str
    import_s: float
    import_mb: float
    peak_mb: float
    duration_s: float  # wall time of the (first) invocation
    cpu_s: float  # CPU time of that invocation, all threads
    one_invocation: bool = True  # False: several invocations (not a Timeout figure)


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


# --- the child: one cold invocation, as Lambda runs it ---------------------------------------


class LambdaContext:
    """What the handlers read of Lambda's context object."""

    def __init__(self, handler: str):
        self.function_name = f"prism-{STAGE}-{handler}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{handler}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = "00000000-0000-0000-0000-000000000000"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "sizing"
        self._deadline = time.monotonic() + 900

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mb() -> float:
    """The kernel's peak RSS of this process image alone: cross-checks ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def outcome(result) -> dict:
    """What the parent checks: an API status code, or an SQS batch's failed messages."""
    if isinstance(result, dict) and "statusCode" in result:
        return {"status": result["statusCode"], "body": str(result.get("body"))[:300]}
    if isinstance(result, dict) and "batchItemFailures" in result:
        return {"failed": len(result["batchItemFailures"])}
    return {}


def invoke_like_lambda(handler_name: str, events_path: str, result_path: str) -> None:
    """events_path holds one event a line: the first is the measured cold invocation, the rest
    follow in the same (now warm) process, as a reused container runs them."""
    sys.path.insert(0, str(REPO))
    started = time.perf_counter()
    import app

    report = {"import_s": time.perf_counter() - started, "import_mb": peak_rss_mb()}
    handler = getattr(app, handler_name)
    context = LambdaContext(handler_name)
    with open(events_path) as events:
        event = json.loads(next(events))  # read after the import: its size is the handler's
        started, cpu_before = time.perf_counter(), cpu_s()
        outcomes = [outcome(handler(event, context))]
        report |= {
            "duration_s": time.perf_counter() - started,
            "cpu_s": cpu_s() - cpu_before,
            "peak_mb": peak_rss_mb(),
            "hwm_mb": vm_hwm_mb(),
        }
        del event
        for line in events:
            outcomes.append(outcome(handler(json.loads(line), context)))
    report |= {
        "all_s": time.perf_counter() - started,
        "all_cpu_s": cpu_s() - cpu_before,
        "all_peak_mb": peak_rss_mb(),
        "outcomes": outcomes,
    }
    Path(result_path).write_text(json.dumps(report))


# --- the parent: servers, seeding, one child per measurement ---------------------------------


def start_moto() -> tuple[subprocess.Popen, str]:
    import seeding  # beside this script

    return seeding.start_moto()


class HealthyEndpoints(BaseHTTPRequestHandler):
    """Every model's endpoint: 200 on any path; counts the probes."""

    def do_GET(self):  # noqa: N802 - http.server's name
        with self.server.lock:
            self.server.probes += 1
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: a thousand probes a run
        pass


def start_health_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthyEndpoints)
    server.daemon_threads = True
    server.lock, server.probes = threading.Lock(), 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Starts the measured processes. On Linux a new process's ru_maxrss starts at the resident size
# of the process it was forked from (the kernel carries the high-water mark across fork and
# exec), so children forked by this parent, grown by imports and seeding, would report its size
# as theirs. This small process, started before the parent grows, forks them instead.
SPAWNER = """
import json, subprocess, sys
for line in sys.stdin:
    job = json.loads(line)
    try:
        with open(job["log"], "wb") as log:
            done = subprocess.run(job["command"], cwd=job["cwd"], env=job["env"], stdout=log,
                                  stderr=subprocess.STDOUT, timeout=job["timeout"])
        print(done.returncode, flush=True)
    except subprocess.TimeoutExpired:
        print(124, flush=True)
"""


class Runner:
    """Runs each measurement in a fresh interpreter, with the environment Lambda would give."""

    def __init__(self, workdir: Path):
        self.workdir, self.env = workdir, dict(os.environ)  # run_scenarios completes it
        self._spawner = subprocess.Popen(
            [sys.executable, "-c", SPAWNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        self._spawner.stdin.close()
        self._spawner.wait()

    def invoke(self, label: str, handler: str, events: list[dict]) -> dict:
        slug = re.sub(r"\W+", "-", label)
        events_path = self.workdir / f"{slug}.jsonl"
        events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
        result_path, log_path = self.workdir / f"{slug}.json", self.workdir / f"{slug}.log"
        command = [sys.executable, __file__, "--invoke", handler]
        command += ["--events", str(events_path), "--result", str(result_path)]
        job = {"command": command, "cwd": str(REPO), "env": self.env, "timeout": 900}
        job["log"] = str(log_path)  # the handlers' JSON logs and EMF lines
        self._spawner.stdin.write(json.dumps(job) + "\n")
        self._spawner.stdin.flush()
        returncode = int(self._spawner.stdout.readline())
        if returncode != 0:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"{label}: the invocation failed ({returncode}):\n{tail}")
        report = json.loads(result_path.read_text())
        if abs(report["peak_mb"] - report["hwm_mb"]) > 2:  # both: this process's own peak
            print(f"  {label}: ru_maxrss {report['peak_mb']:.0f} MB, VmHWM {report['hwm_mb']:.0f}")
        return report


def measured(function: str, size: str, report: dict) -> Measurement:
    fields = ("import_s", "import_mb", "peak_mb", "duration_s", "cpu_s")
    return Measurement(function, size, **{name: report[name] for name in fields})


# --- scenario: the API ---------------------------------------------------------------------


def seed_owner_deployments(owner_id: str, total: int) -> None:
    """`total` prism_node deployments of one owner over every status (as benchmarks/api.py)."""
    from chalicelib.lifecycle import Status
    from chalicelib.services.deployments import new_deployment_id
    from chalicelib.store.deployments import owner_status_key
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem

    statuses = [s.value for s in Status]
    with DeploymentItem.batch_write() as batch:
        for i in range(total):
            status = statuses[i % len(statuses)]
            batch.save(
                DeploymentItem(
                    id=new_deployment_id(),
                    owner_id=owner_id,
                    name=f"m{i}",
                    target="prism_node",
                    status=status,
                    owner_status=owner_status_key(owner_id, status),
                    image="nginx:1.27",
                    deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
                )
            )


def api_event(method: str, api_key: str, query: dict | None = None, body=None, headers=None):
    """An API Gateway REST proxy event for DEPLOYMENTS (no path parameters)."""
    headers = {
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "authorization": f"Bearer {api_key}",
        "content-type": "application/json",
        **(headers or {}),
    }
    return {
        "resource": DEPLOYMENTS,
        "path": DEPLOYMENTS,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": DEPLOYMENTS,
            "httpMethod": method,
            "path": f"/api{DEPLOYMENTS}",
            "stage": "api",
            "requestId": "sizing",
            "identity": {"sourceIp": "203.0.113.9"},
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def measure_api(runner: Runner, sizes: Sizes) -> list[Measurement]:
    from chalicelib.store.users import UserRepository

    user = UserRepository().create_user_with_key("sizing")
    seed_owner_deployments(user.user_id, sizes.listed)
    listing = api_event("GET", user.api_key, query={"limit": "100"})
    create = api_event(
        "POST",
        user.api_key,
        body={"name": "sizing", "image": "nginx:1.27", "budget_max_usd": 10},
        headers={"idempotency-key": "sizing-create-1"},
    )
    rows = []
    for label, event, size in (
        ("list", listing, f"GET list (limit 100) of an owner's {sizes.listed:,} deployments"),
        ("create", create, "POST create (prism_node, Idempotency-Key)"),
    ):
        report = runner.invoke(f"api-{label}", "app", [event])
        status = report["outcomes"][0]["status"]
        if status >= 300:
            raise SystemExit(f"API {label} answered {status}: {report['outcomes'][0]}")
        rows.append(measured("APIHandler", size, report))
    return rows


def measure_sweep(runner: Runner) -> list[Measurement]:
    """SweepNodes with no nodes and the one deployment the create left waiting: not a load
    figure, but what any handler adds to the import by making its AWS clients."""
    report = runner.invoke("sweep-nodes", "sweep_nodes", [scheduled_event("sweep")])
    return [measured("SweepNodes", "0 nodes, 1 deployment waiting for a node", report)]


# --- scenario: cloud upkeep ------------------------------------------------------------------


def seed_running_cloud(owner_id: str, launched: list, health_url: str) -> None:
    """Running image deployments on those pods (probed by CheckCloudHealth, not by an agent),
    their endpoints on the health server. No meter (not billable), so the metering figures
    count exactly the billable deployments asked for."""
    from chalicelib.store.deployments import owner_status_key
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem
    from chalicelib.store.shards import CLOUD_SHARDS, shard_of

    launched_at = datetime.now(UTC) - timedelta(hours=1)
    with DeploymentItem.batch_write() as batch:
        for i, (deployment_id, instance) in enumerate(launched):
            batch.save(
                DeploymentItem(
                    id=deployment_id,
                    owner_id=owner_id,
                    name=f"c{i}",
                    target="runpod",
                    status="running",
                    owner_status=owner_status_key(owner_id, "running"),
                    image="acme/llm:1",
                    gpu_type="A100",
                    deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
                    provider_instance_id=instance.id,
                    launched_at=launched_at,
                    endpoint_url=f"{health_url}/{deployment_id}",
                    healthy=True,
                    cloud=shard_of(deployment_id, CLOUD_SHARDS),
                )
            )


def measure_cloud_upkeep(runner: Runner, sizes: Sizes, runpod, health) -> list[Measurement]:
    import seeding  # beside this script

    from chalicelib.store.users import UserRepository

    owner = UserRepository().create_user_with_key("sizing-cloud").user_id
    launched = seeding.launch_pods(runpod, sizes.cloud, STAGE)
    health_url = f"http://127.0.0.1:{health.server_address[1]}"
    seed_running_cloud(owner, launched, health_url)
    size = f"{sizes.cloud:,} running cloud deployments"

    from chalicelib.config import settings
    from chalicelib.services.cloud_health import HEALTH_CHECKS_PER_MESSAGE

    report = runner.invoke("check-cloud-health", "check_cloud_health", [scheduled_event("chk")])
    rows = [measured("CheckCloudHealth", f"{size} queued for their probes", report)]
    expected = math.ceil(sizes.cloud / HEALTH_CHECKS_PER_MESSAGE)
    batches = take_queue(expected, settings.health_queue, batch_size=1)
    report = runner.invoke("health-worker", "health_worker", batches)
    if health.probes != sizes.cloud or any(o["failed"] for o in report["outcomes"]):
        raise SystemExit(f"HealthWorker probed {health.probes} of {sizes.cloud} endpoints")
    rows.append(
        measured("HealthWorker", f"one message: {HEALTH_CHECKS_PER_MESSAGE} of {size}", report)
    )

    report = runner.invoke("reap-cloud", "reap_cloud", [scheduled_event("reap")])
    if len(runpod.live_pods()) != sizes.cloud:
        raise SystemExit("ReapCloud terminated pods of live deployments")
    rows.append(measured("ReapCloud", f"{size} + their {sizes.cloud:,} pods", report))
    return rows


# --- scenario: metering --------------------------------------------------------------------


def seed_metering(billable: int, stopped: int) -> None:
    """As benchmarks/metering.py (benchmarks/seeding.py)."""
    import seeding  # beside this script

    seeding.billing_deployments(billable, stopped)


def take_queue(expected: int, queue: str, batch_size: int = 10) -> list[dict]:
    """Every message the tick sent, as SQS events of `batch_size` (the trigger's), hidden
    from other receivers for the rest of the run."""
    from chalicelib import aws

    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = attributes["Attributes"]["QueueArn"]
    messages: list[dict] = []
    for _ in range(expected * 3):
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=3600
        ).get("Messages", [])
        messages += got
        if len(messages) >= expected:
            break
    if len(messages) != expected:
        raise SystemExit(f"the tick queued {len(messages)} messages, expected {expected}")
    records = [sqs_record(m, arn) for m in messages]
    return [{"Records": records[i : i + batch_size]} for i in range(0, len(records), batch_size)]


def measure_metering(runner: Runner, sizes: Sizes) -> list[Measurement]:
    from chalicelib.services.metering import ENTRIES_PER_MESSAGE

    started = time.perf_counter()
    seed_metering(sizes.billable, sizes.stopped)
    print(
        f"  seeded {sizes.billable:,} billable + {sizes.stopped:,} stopped deployments in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    size = f"{sizes.billable:,} billable (+{sizes.stopped:,} stopped)"
    report = runner.invoke("meter-tick", "meter_tick", [scheduled_event("tick")])
    rows = [measured("MeterTick", size, report)]

    from chalicelib.config import settings

    batches = take_queue(math.ceil(sizes.billable / ENTRIES_PER_MESSAGE), settings.metering_queue)
    report = runner.invoke("meter-worker", "meter_worker", batches)
    failed = sum(o["failed"] for o in report["outcomes"])
    if failed:
        raise SystemExit(f"MeterWorker: {failed} messages failed")
    first = len(batches[0]["Records"])
    rows.append(measured("MeterWorker", f"one batch: {first} messages x 100 of {size}", report))
    drain = report | {
        "peak_mb": report["all_peak_mb"],
        "duration_s": report["all_s"],
        "cpu_s": report["all_cpu_s"],
    }
    label = f"whole drain: {len(batches)} batches in one warm process"
    rows.append(replace(measured("MeterWorker", label, drain), one_invocation=False))
    return rows


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


# --- main ----------------------------------------------------------------------------------


def lambda_env(runpod, lam) -> dict[str, str]:
    """The children's environment: moto for AWS (set by run_scenarios), the fakes' keys and
    URLs for the providers, and the Powertools settings .chalice/config.json gives on AWS."""
    return os.environ | {
        "RUNPOD_API_KEY": runpod.api_key,
        "PRISM_RUNPOD_API_URL": runpod.url,
        "PRISM_RUNPOD_ENDPOINT_TEMPLATE": runpod.endpoint_template,
        "LAMBDA_API_KEY": lam.api_key,
        "PRISM_LAMBDA_API_URL": lam.url,
        "PRISM_LAMBDA_ENDPOINT_TEMPLATE": lam.endpoint_template,
        "POWERTOOLS_SERVICE_NAME": "prism",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }


def run_scenarios(runner: Runner, aws_url: str, sizes: Sizes) -> list[Measurement]:
    from prism.dev.awsenv import local_aws_env

    os.environ.update(local_aws_env(aws_url, STAGE))  # before chalicelib reads its settings
    from chalicelib import aws
    from chalicelib.config import settings
    from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
    from prism.dev.fakes.runpod import FakeRunPod
    from prism.dev.infra import create_queues, create_tables

    create_tables(aws.client("dynamodb"), settings)
    create_queues(aws.client("sqs"), settings.stage)
    health = start_health_server()
    rows: list[Measurement] = []
    with FakeRunPod(boot_seconds=0) as runpod, FakeLambdaCloud(boot_seconds=0) as lam:
        runner.env = lambda_env(runpod, lam)
        # Smallest tables first: moto walks a whole table for an index Query.
        scenarios = [
            ("API", lambda: measure_api(runner, sizes) + measure_sweep(runner)),
            ("cloud upkeep", lambda: measure_cloud_upkeep(runner, sizes, runpod, health)),
            ("metering", lambda: measure_metering(runner, sizes)),
        ]
        for name, scenario in scenarios:
            started = time.perf_counter()
            print(f"{name}...", flush=True)
            rows += scenario()
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    health.shutdown()
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    for name in ("billable", "stopped", "cloud", "listed"):
        parser.add_argument(f"--{name}", type=int, help=f"override the size (full: {FULL})")
    parser.add_argument("--write", action="store_true", help=f"write {SIZING_FILE.name}")
    parser.add_argument("--invoke", help=argparse.SUPPRESS)  # the child: a handler name
    parser.add_argument("--events", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.invoke:
        invoke_like_lambda(args.invoke, args.events, args.result)
        return
    sizes = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in vars(FULL) if getattr(args, k) is not None}
    sizes = replace(sizes, **overrides)
    if args.write and sizes != FULL:
        raise SystemExit(f"--write records the full sizes only ({FULL})")
    workdir = Path(tempfile.mkdtemp(prefix="lambda-sizing-"))
    runner = Runner(workdir)  # first, while this process is small: see SPAWNER
    started = time.perf_counter()
    moto, aws_url = start_moto()
    try:
        rows = run_scenarios(runner, aws_url, sizes)
    finally:
        runner.close()
        moto.terminate()
        moto.wait()
    recommendations = recommend(rows, date.today().isoformat())
    print_table(rows, recommendations)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; the children's logs are in {workdir}")
    if args.write:
        write_sizing(recommendations, SIZING_FILE)


if __name__ == "__main__":
    main()
