"""`prism dev up --fake-hub`: the local node pulls hf:// weights from a fake Hugging Face Hub
through the real huggingface_hub, and serves them."""

import json

import pytest
import requests

from tests.e2e.conftest import free_port, start_platform, stop_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    started = start_platform(
        root,
        tick=1,
        args=("--fake-hub", "--hub-port", str(free_port()), "--state-dir", str(root / "state")),
    )
    yield started
    stop_platform(started)


def test_an_hf_model_from_the_fake_hub_runs_on_the_local_node(platform):
    created = json.loads(
        platform.cli(
            "deploy", "create", "--name", "hub-model", "--weights", "hf://prism/tiny-regressor@v1",
            "--gpu", "none", "--port", str(free_port()), "--wait", "--json",
            "--", "python3", "serve.py",
            check=True,
        ).stdout
    )  # fmt: skip
    assert created["status"] == "running" and len(created["weights_revision"]) == 40
    answer = requests.post(
        created["endpoint_url"] + "/predict",
        json={"inputs": [[1, 2, 3, 4]]},
        headers={"Authorization": f"Bearer {created['endpoint_key']}"},
        timeout=10,
    )
    assert answer.status_code == 200 and "outputs" in answer.json()
    platform.cli("deploy", "stop", created["id"], check=True)
