"""Time from POST to `running`, per phase, and from a model crash to its restart (the default
policy, on-failure) or to `failed` (policy never), on the whole local stack (moto server,
chalice local, WebSocket gateway, a real node agent).

The model is a server that is ready at once; its own start-to-ready time is measured bare (spawn
it, poll /health) in the same run, so the platform's overhead is the difference of medians.
Deployments name no port, as most users' will: the node reserves one for each.
Goals: overhead median <= 1.0 s; a crash restarted or failed within one probe interval.

    .venv/bin/python benchmarks/startup.py [--deployments 20] [--crashes 5]
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from http.client import HTTPConnection
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prism.dev.local_state import LocalState  # noqa: E402
from prism.dev.platform import LocalPlatform  # noqa: E402
from prism.dev.processes import free_port  # noqa: E402

MODEL = [sys.executable, str(REPO / "tests" / "fakes" / "model_server.py")]
PROBE_INTERVAL = 10.0  # the agent's default


def pct(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Api:
    def __init__(self, platform: LocalPlatform, key: str):
        self.http = HTTPConnection(platform.host, platform.api_port, timeout=30)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.http.request(
            method, path, body=json.dumps(body) if body else None, headers=self.headers
        )
        response = self.http.getresponse()
        return json.loads(response.read())


def bare_ready_seconds(weights: Path) -> float:
    """The model's own start-to-ready time, without the platform."""
    port = free_port()
    env = os.environ | {"PORT": str(port), "PRISM_WEIGHTS_DIR": str(weights)}
    started = time.perf_counter()
    process = subprocess.Popen(MODEL, env=env, stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    return time.perf_counter() - started
            except requests.ConnectionError:
                time.sleep(0.005)
    finally:
        process.terminate()
        process.wait()


def deploy_and_time(
    api: Api, weights: Path, name: str, restart: str = "on-failure"
) -> tuple[str, dict]:
    """POST, then poll every 10 ms; returns the id and when each status was first seen."""
    started = time.perf_counter()
    created = api.call(
        "POST",
        "/api/v1/compute/deployments",
        {
            "name": name,
            "weights_source": str(weights),
            "gpu": False,
            "command": MODEL,
            "deploy_config": {"health_path": "/health", "restart": restart},
        },
    )
    seen = {created["status"]: time.perf_counter() - started}
    while "running" not in seen:
        status = api.call("GET", f"/api/v1/compute/deployments/{created['id']}")["status"]
        if status == "failed":
            raise SystemExit(f"{created['id']} failed while starting")
        seen.setdefault(status, time.perf_counter() - started)
        time.sleep(0.01)
    return created["id"], seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--crashes", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    weights = work / "weights"
    weights.mkdir()
    (weights / "model.json").write_text("{}")
    platform = LocalPlatform(
        api_port=free_port(),
        moto_port=free_port(),
        ws_port=free_port(),
        management_port=free_port(),
        state=LocalState(work / "state"),
    )
    user = platform.start()
    env = platform.env() | {
        "PRISM_API_URL": platform.api_url,
        "PRISM_API_KEY": user["api_key"],
        "PRISM_WS_URL": platform.ws_url,
        "PRISM_CONFIG": str(work / "cli.json"),
    }
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prism",
            "node",
            "up",
            "--state-dir",
            str(work / "node"),
            "--local-api-port",
            "0",
            "--probe-interval",
            str(PROBE_INTERVAL),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        api = Api(platform, user["api_key"])
        while not any(
            n["status"] == "online" for n in api.call("GET", "/api/v1/compute/nodes")["items"]
        ):
            time.sleep(0.1)
        run(api, weights, args)
    finally:
        agent.terminate()
        agent.wait()
        platform.stop()


def run(api: Api, weights: Path, args) -> None:
    bare = [bare_ready_seconds(weights) for _ in range(5)]
    timings = []
    ids = []
    for i in range(args.deployments):
        deployment_id, seen = deploy_and_time(api, weights, f"bench{i}")
        ids.append(deployment_id)
        timings.append(seen)
    totals = [t["running"] for t in timings]
    print(f"{args.deployments} deployments of a server that is ready at once (local stack)")
    print(
        f"  POST -> running   median {statistics.median(totals):.3f}s   "
        f"p95 {pct(totals, 0.95):.3f}s"
    )
    previous = "provisioning"
    for phase in ("pulling", "starting", "running"):
        spans = [t[phase] - t.get(previous, 0) for t in timings if phase in t and previous in t]
        if spans:
            print(f"  {previous:>12} -> {phase:<8} median {statistics.median(spans):.3f}s")
        previous = phase
    model = statistics.median(bare)
    overhead = statistics.median(totals) - model
    print(f"  the model alone: start -> ready median {model:.3f}s (spawned bare, same run)")
    print(
        f"  platform overhead (median POST->running minus model alone): {overhead:.3f}s  "
        f"goal <= 1.0 s: {'ok' if overhead <= 1.0 else 'OVER'}"
    )

    restarted = [crash_until(api, d, lambda x: x["restarts"] >= 1) for d in ids[: args.crashes]]
    never = [deploy_and_time(api, weights, f"never{i}", "never")[0] for i in range(args.crashes)]
    failed = [crash_until(api, d, lambda x: x["status"] == "failed") for d in never]
    for label, detections in (("restarted (on-failure)", restarted), ("failed (never)", failed)):
        print(
            f"crash -> {label}: median {statistics.median(detections):.3f}s, "
            f"max {max(detections):.3f}s over {len(detections)} crashes; probe interval "
            f"{PROBE_INTERVAL:.0f}s: {'ok' if max(detections) <= PROBE_INTERVAL else 'OVER'}"
        )
    for deployment_id in ids[args.crashes :]:
        api.call("DELETE", f"/api/v1/compute/deployments/{deployment_id}")


def crash_until(api: Api, deployment_id: str, reached) -> float:
    """Seconds from asking the model to crash until the control plane shows `reached`."""
    detail = api.call("GET", f"/api/v1/compute/deployments/{deployment_id}")
    crashed_at = time.perf_counter()
    with contextlib.suppress(requests.RequestException):
        requests.post(detail["endpoint_url"] + "/crash", timeout=2)
    while not reached(api.call("GET", f"/api/v1/compute/deployments/{deployment_id}")):
        time.sleep(0.01)
    return time.perf_counter() - crashed_at


if __name__ == "__main__":
    main()
