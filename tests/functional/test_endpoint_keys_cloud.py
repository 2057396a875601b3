"""Endpoint keys of a weights deployment on a cloud instance: the agent on the instance serves
the endpoint through its proxy, so the deployment gets a key, and a rotation goes to the
instance's own node (the real provision and teardown state machines on moto, the fake
providers, the agent played over the real WebSocket handlers)."""

import pytest

from chalicelib.protocol import hash_endpoint_key
from chalicelib.services import registry
from tests.cloud_sandbox import DEPLOYMENTS, TERMINAL, detail, reaches
from tests.functional.test_cloud_agent import (  # noqa: F401 - app: a fixture
    agent_of,
    app,
    brought_up,
    wait_launched,
)
from tests.functional.test_endpoint_keys import RecordingManagementApi

pytestmark = pytest.mark.clouds("agent")


@pytest.fixture
def management(aws_backend, monkeypatch):
    recording = RecordingManagementApi()
    for channel in (
        registry.placement()._channel,
        registry.node_requests()._channel,
        registry.node_channel(),
    ):
        monkeypatch.setattr(channel, "_client_factory", lambda: recording)
    return recording


def test_a_rotation_reaches_the_node_on_the_deployments_own_instance(
    api,
    app,  # noqa: F811
    fakes,
    management,
):
    body = {"name": "llm", "target": "runpod", "gpu_type": "A100", "budget_max_usd": 50}
    body |= {"weights_source": "hf://acme/llm@main", "command": ["python3", "serve.py"]}
    created = api.post(DEPLOYMENTS, body)
    assert created.status_code == 201, created.data
    deployment_id, key = created.data["id"], created.data["endpoint_key"]
    assert created.data["endpoint_auth"] == "key" and key

    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    [deploy] = management.of_type("deploy_model", agent.connection_id)
    assert deploy["whole_node"] is True
    assert deploy["endpoint_key_hashes"] == [hash_endpoint_key(key)]
    brought_up(agent, deployment_id)
    reaches(api, deployment_id, {"running"})

    rotated = api.post(f"{DEPLOYMENTS}/{deployment_id}/endpoint-keys")
    assert rotated.status_code == 201 and rotated.data["delivered"] is True
    [keys] = management.of_type("endpoint_keys", agent.connection_id)
    assert keys["key_hashes"] == [hash_endpoint_key(rotated.data["endpoint_key"])]

    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    assert reaches(api, deployment_id, TERMINAL)["status"] == "stopped"
    assert detail(api, deployment_id)["endpoint_auth"] == "key"
