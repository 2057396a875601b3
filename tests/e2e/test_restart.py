"""The local platform keeps its state across restarts of the real `prism dev up`: Ctrl-C and
start again; kill -9 with a cloud deployment provisioning and one running, and start again.

The fake RunPod runs in this test process: like a real provider, it outlives the platform."""

import json
import os
import select
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from prism.dev.fakes.__main__ import RUNPOD_KEY
from prism.dev.fakes.runpod import FakeRunPod, priced_gpu_types
from tests.e2e.conftest import (
    STARTED,
    alive,
    descendants,
    free_port,
    start_platform,
    stop_platform,
)

PRICE_PER_HOUR = 360.0  # ten cents a second: a gap or a double charge shows, rounding does not
LATENCY_S = 3  # what launch and confirm latency may add or take (a provider bills in seconds)


@pytest.fixture(autouse=True)
def platforms_stopped():
    """Whatever a test leaves running when it fails half-way is stopped after it."""
    before = len(STARTED)
    yield
    for process in STARTED[before:]:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


@pytest.fixture
def runpod():
    with FakeRunPod(
        api_key=RUNPOD_KEY, boot_seconds=1, gpu_types=priced_gpu_types(PRICE_PER_HOUR)
    ) as fake:
        yield fake


def _cloud_env(runpod: FakeRunPod) -> dict:
    return {
        "RUNPOD_API_KEY": RUNPOD_KEY,  # kept by the platform in its SSM, where functions read it
        "PRISM_RUNPOD_API_URL": runpod.url,
        "PRISM_RUNPOD_ENDPOINT_TEMPLATE": f"{runpod.base_url}/proxy/{{id}}-{{port}}",
        # A provision whose workflow was lost (the platform died) is restarted this soon.
        "PRISM_CLOUD_WORKFLOW_LOST_SECONDS": "3",
    }


def _json(platform, *args, key: str | None = None) -> dict:
    return json.loads(platform.cli(*args, "--json", key=key, check=True).stdout)


def _until(platform, deployment_id: str, statuses: set, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = _json(platform, "deploy", "status", deployment_id)
        if detail["status"] in statuses:
            return detail
        time.sleep(0.5)
    raise AssertionError(f"{deployment_id} stayed {detail['status']}: {detail}")


def _cloud(platform, name: str) -> dict:
    return _json(
        platform,
        *("deploy", "create", "--name", name, "--image", "acme/llm:1", "--target", "runpod"),
        *("--gpu", "A100", "--budget", "100"),
    )


def _local_model(name: str, port: int) -> tuple[str, ...]:
    """The bundled example on the local node, on a port of its own (tests run side by side)."""
    return ("deploy", "create", "--name", name, "--resource", "tiny-regressor", "--port", str(port))


def _model_pids(deployment_id: str) -> set[int]:
    """The processes serving the bundled example for this deployment (the agent tells each
    model which deployment it serves in PRISM_DEPLOYMENT_ID)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if "tiny-regressor" not in cmdline.read_text():
                continue
            environ = (cmdline.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PRISM_DEPLOYMENT_ID={deployment_id}".encode() in environ:
            found.add(int(cmdline.parent.name))
    return found


def test_kill_9_and_restart_loses_nothing_and_charges_exactly(tmp_path, runpod):
    env = _cloud_env(runpod)
    state = tmp_path / "state"
    first = start_platform(tmp_path, tick=1, extra_env=env, args=("--state-dir", str(state)))
    port = free_port()
    made = _json(first, *_local_model("here", port))  # its endpoint key is shown only here
    local = _until(first, made["id"], {"running"})
    models = _model_pids(local["id"])
    assert len(models) == 1
    running = _until(first, _cloud(first, "up")["id"], {"running"})
    coming = _cloud(first, "coming")  # provisioning when the platform dies
    children = descendants(first.process.pid)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    deadline = time.monotonic() + 30  # every child dies with it (parent-death signal)...
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in children if alive(pid)]
    assert set(survivors) == models  # ...but the models, which the node agent re-adopts

    second = start_platform(tmp_path, tick=1, extra_env=env, args=("--state-dir", str(state)))
    try:
        assert second.api_key == first.api_key  # the old key still works
        again = _until(second, local["id"], {"running"})
        assert again["endpoint_url"] == local["endpoint_url"]
        assert _model_pids(local["id"]) == models  # re-adopted, not restarted
        answer = requests.post(
            f"{again['endpoint_url']}/predict",
            json={"inputs": [[1, 2, 3, 4]]},
            headers={"Authorization": f"Bearer {made['endpoint_key']}"},
        )
        assert answer.status_code == 200
        assert _until(second, running["id"], {"running"})["status"] == "running"
        # The lost provision is restarted and adopts the instance already launched, if any.
        came = _until(second, coming["id"], {"running", "failed"}, timeout=120)
        assert came["status"] == "running", came
        pods = {pod["name"]: pod for pod in runpod.live_pods()}
        assert sorted(pods) == sorted(f"prism-dev-{d}" for d in (running["id"], coming["id"]))
        # Both billed long enough that the exactness check below can fail.
        youngest = max(pod["created_at"] for pod in pods.values())
        time.sleep(max(0.0, youngest + 2 * LATENCY_S - time.time()))
        for deployment_id in (running["id"], coming["id"]):
            second.cli("deploy", "stop", deployment_id, check=True)
        for deployment_id in (running["id"], coming["id"]):
            _check_charged_exactly(second, runpod, deployment_id)
        assert runpod.live_pods() == []
    finally:
        stop_platform(second)


def _check_charged_exactly(platform, runpod: FakeRunPod, deployment_id: str) -> None:
    detail = _until(platform, deployment_id, {"stopped"})
    pod = next(p for p in runpod.pods.values() if p["name"] == f"prism-dev-{deployment_id}")
    bill = float(runpod.bill(pod["id"]))
    per_second = PRICE_PER_HOUR / 3600
    assert bill > 2 * LATENCY_S * per_second  # so the check below can fail
    # Metered across the outage: no gap, nothing twice; only launch/confirm latency differs.
    assert abs(detail["cost_accrued_usd"] - bill) < LATENCY_S * per_second, (
        detail["cost_accrued_usd"],
        bill,
    )
    costs = _json(platform, "deploy", "costs", deployment_id, "--limit", "500")["items"]
    assert len(costs) < 500  # all of them
    total = sum(Decimal(str(entry["amount_usd"])) for entry in costs)
    assert float(total) == pytest.approx(detail["cost_accrued_usd"], abs=1e-6)
    periods = sorted((entry["period_start"], entry["period_end"]) for entry in costs)
    for (_, end), (start, _) in zip(periods, periods[1:], strict=False):
        assert start == end  # each charge starts where the one before ended


def _printed(platform, needle: str, timeout: float = 30) -> str:
    """The next line `prism dev up` prints that holds `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([platform.process.stdout], [], [], 0.5)
        if ready:
            line = platform.process.stdout.readline()
            if needle in line:
                return line
    raise AssertionError(f"prism dev up did not print {needle!r}")


def test_a_killed_node_agent_is_restarted_and_ctrl_c_and_restart_keep_everything(tmp_path):
    state = tmp_path / "state"
    first = start_platform(tmp_path, tick=1, args=("--state-dir", str(state)))
    bob = json.loads(first.cli("admin", "create-key", "--name", "bob", "--json", check=True).stdout)
    port = free_port()
    created = _json(first, *_local_model("kept", port))
    _until(first, created["id"], {"running"})
    models = _model_pids(created["id"])
    (node,) = _json(first, "node", "list")
    (agent,) = [
        pid
        for pid in descendants(first.process.pid)
        if "node\0up" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    os.kill(agent, signal.SIGKILL)  # the platform goes on, and brings the agent back
    assert "node agent exited (code -9)" in _printed(first, "node agent exited")
    assert "restarted" in _printed(first, "node agent was restarted")
    log = state / "logs" / "node.log"
    deadline = time.monotonic() + 30
    while log.read_text().count("connected to") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("connected to") == 2  # the new agent is back on line
    assert _until(first, created["id"], {"running"})["status"] == "running"
    assert _model_pids(created["id"]) == models  # re-adopted by the new agent, not started again
    assert first.process.poll() is None
    assert stop_platform(first) == 0
    assert _model_pids(created["id"]) == set()  # Ctrl-C stops everything, the models too

    second = start_platform(tmp_path, tick=1, args=("--state-dir", str(state)))
    try:
        assert second.api_key == first.api_key
        assert [n["id"] for n in _json(second, "node", "list")] == [node["id"]]
        listed = _json(second, "deploy", "list")["items"]
        assert [d["id"] for d in listed] == [created["id"]]
        assert listed[0]["status"] == "stopped"
        assert _json(second, "deploy", "list", key=bob["api_key"])["items"] == []  # bob's key
    finally:
        stop_platform(second)

    fresh = start_platform(tmp_path, tick=1, args=("--state-dir", str(state), "--fresh"))
    try:
        assert fresh.api_key != first.api_key
        assert _json(fresh, "deploy", "list")["items"] == []
        refused = fresh.cli("deploy", "list", key=bob["api_key"])
        assert refused.returncode == 1 and "401" in refused.stderr
    finally:
        stop_platform(fresh)


def test_fresh_after_a_crash_stops_the_models_it_would_otherwise_forget(tmp_path):
    state = tmp_path / "state"
    first = start_platform(tmp_path, tick=1, args=("--state-dir", str(state)))
    port = free_port()
    orphan = _until(first, _json(first, *_local_model("orphan", port))["id"], {"running"})
    assert len(_model_pids(orphan["id"])) == 1
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    fresh = start_platform(tmp_path, tick=1, args=("--state-dir", str(state), "--fresh"))
    try:
        assert _model_pids(orphan["id"]) == set()  # stopped before its record was deleted
        assert _json(fresh, "deploy", "list")["items"] == []
    finally:
        stop_platform(fresh)
