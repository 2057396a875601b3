"""A pull survives the agent: `kill -9` of a real `prism node up` in the middle of a download,
then a new agent on the same state directory resumes the pull from the bytes already on disk
(a Range request from where it stopped, not from zero), reports it `pulling` again with its
progress, and runs the model. Over https:// (a plain file server) and hf:// (the fake Hub and
the real huggingface_hub); r2:// resumes file by file through the same cache entry."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from prism.dev.fakes.hf_hub import FakeHfHub
from tests.e2e.conftest import PRISM, REPO, free_port
from tests.fakes.file_server import Faults, FileServer

pytestmark = pytest.mark.e2e
MODEL = [sys.executable, str(REPO / "tests" / "fakes" / "model_server.py")]
SIZE = 6 * 1024 * 1024
STALL_AT = 2 * 1024 * 1024


class StandaloneAgent:
    def __init__(self, state: Path, port: int):
        self.state, self.port = state, port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def up(self) -> None:
        out = open(self.state.parent / "agent.out", "ab")  # noqa: SIM115 - the agent holds it
        self.process = subprocess.Popen(
            [
                *PRISM,
                "node",
                "up",
                "--standalone",
                "--state-dir",
                str(self.state),
                "--local-api-port",
                str(self.port),
                "--probe-interval",
                "0.3",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._answers, timeout=30)
        except AssertionError:
            self.process.kill()  # never outlive a failed test
            raise

    def _answers(self) -> bool:
        try:
            requests.get(self.base + "/health", timeout=1)  # any answer: it is up
            return True
        except requests.ConnectionError:
            return False

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {(self.state / 'local-token').read_text().strip()}"}

    def deployment(self, deployment_id: str) -> dict:
        answer = requests.get(
            f"{self.base}/deployments/{deployment_id}", headers=self.headers(), timeout=5
        )
        return answer.json() if answer.ok else {}

    def partial_bytes(self) -> int:
        partial = self.state / "weights" / "partial"
        return sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())

    def output(self) -> str:
        return (self.state.parent / "agent.out").read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)


def wait_for(predicate, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last: {value})")


@pytest.fixture
def agent(tmp_path):
    node = StandaloneAgent(tmp_path / "state", free_port())
    node.up()
    yield node
    # Stop its models too: a test's model must not outlive it.
    if node.process.poll() is None:
        listed = requests.get(node.base + "/deployments", headers=node.headers(), timeout=5)
        for d in listed.json()["items"]:
            requests.delete(
                f"{node.base}/deployments/{d['deployment_id']}", headers=node.headers(), timeout=5
            )
    node.stop()


def deploy_and_kill_mid_pull(agent: StandaloneAgent, body: dict) -> str:
    body = {"command": MODEL, "auth": "public", **body}  # the endpoint is not what is tested
    accepted = requests.post(agent.base + "/deploy", json=body, headers=agent.headers(), timeout=5)
    assert accepted.status_code == 202, accepted.text
    deployment_id = accepted.json()["deployment_id"]
    wait_for(lambda: agent.partial_bytes() >= STALL_AT // 2)
    assert agent.deployment(deployment_id)["status"] == "pulling"
    agent.process.send_signal(signal.SIGKILL)
    agent.process.wait(timeout=10)
    return deployment_id


def resumes_and_runs(agent: StandaloneAgent, deployment_id: str) -> dict:
    progress_before = agent.output().count('"deployment_progress"')
    agent.up()
    running = wait_for(
        lambda: (
            agent.deployment(deployment_id).get("status") == "running"
            and agent.deployment(deployment_id)
        )
    )
    assert requests.get(running["endpoint_url"], timeout=5).json()["weights"]
    # Reported pulling again, with bytes, by the new agent.
    after = agent.output().split("local API on", 2)[-1]
    pulled = [
        json.loads(line[line.index("{") :])
        for line in after.splitlines()
        if '"deployment_progress"' in line and '"pulling"' in line
    ]
    assert any(p.get("bytes_done", 0) > 0 for p in pulled), after[-2000:]
    assert agent.output().count('"deployment_progress"') > progress_before
    return running


def test_an_https_pull_resumes_after_the_agent_is_killed(agent):
    content = bytes(range(256)) * (SIZE // 256)
    with FileServer() as files:
        stall = Faults(stall_after=STALL_AT, stall_seconds=120)
        url = files.add("/model.bin", content, stall)
        deployment_id = deploy_and_kill_mid_pull(agent, {"weights_source": url})
        files.set_faults("/model.bin", Faults())
        resumes_and_runs(agent, deployment_id)
        ranges = [h.get("Range") for method, _, h in files.requests if method == "GET"]
    resumed = [r for r in ranges if r and not r.startswith("bytes=0-")]
    assert resumed, ranges  # from where it stopped, not from zero
    assert int(resumed[-1].removeprefix("bytes=").split("-")[0]) >= STALL_AT // 2


def test_an_hf_pull_resumes_after_the_agent_is_killed(agent):
    with FakeHfHub() as hub:
        # huggingface_hub writes 10 MiB at a time: stall past the first write.
        size = 24 * 1024 * 1024
        hub.add_commit("acme/big", {"config.json": b"{}", "model.safetensors": b"\x07" * size})
        hub.stall_seconds, hub.stall_after_bytes = 120, 12 * 1024 * 1024
        deployment_id = deploy_and_kill_mid_pull(
            agent, {"weights_source": "hf://acme/big", "env_vars": {"HF_ENDPOINT": hub.url}}
        )
        hub.stall_seconds = 0
        resumes_and_runs(agent, deployment_id)
        ranges = [r for path, r in hub.range_requests if path.endswith("model.safetensors")]
    assert any(not r.startswith("bytes=0-") for r in ranges), ranges
