"""Weights deployments on cloud targets, locally: the provision state machine launches an
instance on the fake RunPod / Lambda Cloud with a one-time node token, the instance really runs
our node agent (the pod's image / the VM's cloud-init user data), the agent connects back over
the WebSocket gateway, pulls hf:// weights from the fake hub and serves the model behind the
provider's endpoint. Endings go through teardown: the instance is terminated and charged."""

import json
import time

import pytest
import requests

from prism.dev.fakes.__main__ import LAMBDA_KEY, RUNPOD_KEY
from tests.e2e.conftest import free_port, start_platform, stop_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud-agent")
    ports = {name: free_port() for name in ("runpod", "lambda", "hub")}
    started = start_platform(
        root,
        tick=1,
        args=(
            "--no-node",
            "--fake-clouds",
            "--fake-hub",
            *("--runpod-port", str(ports["runpod"]), "--lambda-port", str(ports["lambda"])),
            *("--hub-port", str(ports["hub"]), "--state-dir", str(root / "state")),
        ),
    )
    started.fake_ports = ports
    yield started
    stop_platform(started)


def deploy(platform, target, name, *command):
    return json.loads(
        platform.cli(
            "deploy", "create", "--name", name, "--weights", "hf://prism/tiny-regressor@v1",
            "--target", target, "--gpu", "A100", "--budget", "5", "--port", str(free_port()),
            "--health-path", "/health", "--json", "--", *command,
            check=True,
        ).stdout
    )  # fmt: skip


def status_of(platform, deployment_id):
    return json.loads(platform.cli("deploy", "status", deployment_id, "--json", check=True).stdout)


def until(platform, deployment_id, statuses, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = status_of(platform, deployment_id)
        if detail["status"] in statuses:
            return detail
        time.sleep(0.3)
    raise AssertionError(f"{deployment_id} stayed {detail['status']}: {detail}")


def live_instances(platform, target):
    """What the fake provider still bills, asked through its own API."""
    if target == "runpod":
        answer = requests.post(
            f"http://127.0.0.1:{platform.fake_ports['runpod']}/graphql",
            json={"query": "query { myself { pods { id name } } }"},
            headers={"Authorization": f"Bearer {RUNPOD_KEY}"},
            timeout=10,
        )
        return [p["name"] for p in answer.json()["data"]["myself"]["pods"]]
    answer = requests.get(
        f"http://127.0.0.1:{platform.fake_ports['lambda']}/api/v1/instances",
        headers={"Authorization": f"Bearer {LAMBDA_KEY}"},
        timeout=10,
    )
    return [i["name"] for i in answer.json()["data"] if i["status"] != "terminating"]


def node_names(platform):
    return {n["name"]: n for n in json.loads(platform.cli("node", "list", "--json").stdout)}


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_a_weights_deployment_runs_on_our_agent_on_the_instance(platform, target):
    created = deploy(platform, target, f"agent-{target}", "python3", "serve.py")
    running = until(platform, created["id"], {"running", "failed"})
    assert running["status"] == "running", running
    assert len(running["weights_revision"]) == 40  # the agent pulled it from the hub
    instance_name = f"prism-dev-{created['id']}"
    assert instance_name in live_instances(platform, target)
    # The provider's public endpoint, not the agent's own address, reaches the model.
    assert running["endpoint_url"].startswith(
        "http://127.0.0.1:" + str(platform.fake_ports[target])
    )
    # Behind the agent's proxy on the instance: the provider's URL needs the endpoint key.
    predict = running["endpoint_url"] + "/predict"
    refused = requests.post(predict, json={"inputs": [[1, 2, 3, 4]]}, timeout=10)
    assert refused.status_code == 401
    key = {"Authorization": f"Bearer {created['endpoint_key']}"}
    answer = requests.post(predict, json={"inputs": [[1, 2, 3, 4]]}, headers=key, timeout=10)
    assert answer.status_code == 200 and "outputs" in answer.json()
    # The instance is a node of its own, running this deployment only; its logs come from it.
    node = node_names(platform)[instance_name]
    assert node["status"] == "online" and running["node_id"] == node["id"]
    logs = platform.cli("deploy", "logs", created["id"], check=True).stdout
    assert "POST /predict" in logs

    platform.cli("deploy", "stop", created["id"], check=True)
    stopped = until(platform, created["id"], {"stopped", "failed"})
    assert stopped["status"] == "stopped" and stopped["cost_accrued_usd"] > 0
    assert instance_name not in live_instances(platform, target)
    assert instance_name not in node_names(platform)  # the node and its token are gone


def test_a_model_that_crashes_on_the_instance_fails_and_the_instance_is_terminated(platform):
    # Restarted under the default policy (on-failure: 3 times, 1 + 2 + 4 s apart), then failed.
    created = deploy(platform, "runpod", "agent-crash", "python3", "-c", "raise SystemExit(3)")
    failed = until(platform, created["id"], {"stopped", "failed"})
    assert (failed["status"], failed["failure_reason"]) == ("failed", "crash"), failed
    assert "code 3" in failed["failure_message"]
    assert "not restarted: it failed again after 3 restarts in a row" in failed["failure_message"]
    assert failed["restarts"] == 3
    assert failed["status_message"] == "instance terminated"  # through teardown, charged
    assert failed["cost_accrued_usd"] > 0
    assert f"prism-dev-{created['id']}" not in live_instances(platform, "runpod")
