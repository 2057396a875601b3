"""`prism node up --standalone`: the node's own HTTP API runs models with no control plane,
behind the agent's endpoint proxy (a key by default, returned once by POST /deploy)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from prism.dev.fakes.hf_hub import FakeHfHub
from prism.dev.tiny_embedder import tiny_embedder_files
from tests.e2e.conftest import PRISM, REPO, free_port

pytestmark = pytest.mark.e2e
MODEL = [sys.executable, str(REPO / "tests" / "fakes" / "model_server.py")]
EXAMPLE_REPO = "sentence-transformers/paraphrase-MiniLM-L3-v2"


def start_standalone(state, env=None):
    port = free_port()
    process = subprocess.Popen(
        [
            *PRISM,
            "node",
            "up",
            "--standalone",
            "--state-dir",
            str(state),
            "--local-api-port",
            str(port),
            "--probe-interval",
            "0.3",
        ],
        cwd=REPO,
        env=None if env is None else os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/health", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    headers = {"Authorization": f"Bearer {(state / 'local-token').read_text().strip()}"}
    return process, base, headers


@pytest.fixture
def standalone(tmp_path):
    process, base, headers = start_standalone(tmp_path / "state")
    yield base, headers
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)


@pytest.fixture
def standalone_with_hub(tmp_path):
    """A standalone node whose hf:// pulls go to a fake Hub holding the product's example."""
    with FakeHfHub() as hub:
        hub.add_commit(EXAMPLE_REPO, tiny_embedder_files())
        process, base, headers = start_standalone(tmp_path / "state", {"HF_ENDPOINT": hub.url})
        yield base, headers
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_the_local_api_deploys_serves_and_stops_a_model(standalone, tmp_path):
    base, headers = standalone
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.json").write_text("{}")
    body = {"weights_source": str(weights), "command": MODEL, "port": free_port()}
    accepted = requests.post(base + "/deploy", json=body, headers=headers, timeout=5)
    assert accepted.status_code == 202
    deployment_id = accepted.json()["deployment_id"]
    key = accepted.json()["endpoint_key"]
    assert key.startswith("prismep_")
    assert key not in json.dumps(requests.get(base + "/deployments", headers=headers).json())

    def state():
        return requests.get(
            f"{base}/deployments/{deployment_id}", headers=headers, timeout=5
        ).json()

    deadline = time.monotonic() + 20
    while state()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    running = state()
    assert running["status"] == "running"
    assert running["endpoint_url"].endswith(f":{body['port']}")  # the proxy's: the port asked
    assert requests.get(running["endpoint_url"], timeout=5).status_code == 401
    served = requests.get(
        running["endpoint_url"], headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).json()
    assert served["weights"] == ["model.json"] and "Authorization" not in served["headers"]
    listed = requests.get(base + "/deployments", headers=headers, timeout=5).json()["items"]
    assert [d["deployment_id"] for d in listed] == [deployment_id]
    assert (
        requests.delete(
            f"{base}/deployments/{deployment_id}", headers=headers, timeout=5
        ).status_code
        == 202
    )
    deadline = time.monotonic() + 20
    while state()["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state()["status"] == "stopped"
    with pytest.raises(requests.ConnectionError):
        requests.get(running["endpoint_url"], timeout=2)


def test_a_public_deployment_gets_no_key_and_answers_without_one(standalone, tmp_path):
    base, headers = standalone
    weights = tmp_path / "weights"
    weights.mkdir()
    body = {"weights_source": str(weights), "command": MODEL, "auth": "public"}
    accepted = requests.post(base + "/deploy", json=body, headers=headers, timeout=5)
    assert accepted.status_code == 202 and "endpoint_key" not in accepted.json()
    deployment_id = accepted.json()["deployment_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = requests.get(f"{base}/deployments/{deployment_id}", headers=headers).json()
        if running["status"] == "running":
            break
        time.sleep(0.1)
    assert requests.get(running["endpoint_url"], timeout=5).json()["weights"] == []
    requests.delete(f"{base}/deployments/{deployment_id}", headers=headers, timeout=5)


def test_the_local_api_needs_its_token_and_valid_input(standalone):
    base, headers = standalone
    assert requests.get(base + "/deployments", timeout=5).status_code == 401
    assert (
        requests.get(
            base + "/deployments", headers={"Authorization": "Bearer x"}, timeout=5
        ).status_code
        == 401
    )
    bad = requests.post(base + "/deploy", data="{nope", headers=headers, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
    shell = requests.post(
        base + "/deploy", json={"command": "rm -rf /"}, headers=headers, timeout=5
    )
    assert shell.status_code == 400
    assert json.loads(shell.text)["error"]["message"].startswith("command")


def test_the_products_example_body_runs_as_written_under_its_own_name(standalone_with_hub):
    base, headers = standalone_with_hub
    body = {
        "deployment_id": "my-model",
        "weights_source": f"hf://{EXAMPLE_REPO}",
        "framework": "auto",
        "port": free_port(),
        "health_path": "/health",
        "gpu": False,
        "env_vars": {},
    }
    accepted = requests.post(base + "/deploy", json=body, headers=headers, timeout=5)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["deployment_id"] == "my-model"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = requests.get(f"{base}/deployments/my-model", headers=headers, timeout=5).json()
        if found["status"] == "running":
            break
        assert found["status"] in ("pulling", "starting"), found
        time.sleep(0.2)
    assert (found["framework"], found["engine"]) == ("sentence-transformers", "prism-embed")
    answer = requests.post(
        found["endpoint_url"] + "/v1/embeddings",
        json={"input": "hello world"},
        headers={"Authorization": f"Bearer {accepted.json()['endpoint_key']}"},
        timeout=10,
    )
    assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 32
    again = requests.post(base + "/deploy", json=body, headers=headers, timeout=5)
    assert again.status_code == 409  # the name is taken while it runs
    control_plane_id = body | {"deployment_id": "dep_0123456789abcdef"}
    refused = requests.post(base + "/deploy", json=control_plane_id, headers=headers, timeout=5)
    assert refused.status_code == 400
    assert "dep_ ids are the control plane's" in refused.json()["error"]["message"]
    gone = requests.delete(f"{base}/deployments/my-model", headers=headers, timeout=5)
    assert gone.status_code == 202
