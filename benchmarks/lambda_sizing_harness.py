"""benchmarks/lambda_sizing.py's harness: one cold invocation of a handler as Lambda runs it, in
a fresh interpreter (the child), and what the parent starts around it (moto, the endpoints'
health server, the process that spawns the children)."""

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = "sizing"
# The child re-enters through the benchmark's own entry point (its --invoke), so it imports
# what a child always imported before `import app`: the import-only figure stays comparable.
ENTRY_POINT = Path(__file__).with_name("lambda_sizing.py")


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


# --- the parent: servers, one child per measurement -----------------------------------------


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
        command = [sys.executable, str(ENTRY_POINT), "--invoke", handler]
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
