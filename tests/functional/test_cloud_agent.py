"""Weights deployments on cloud targets, as the control plane sees them: the real provision and
teardown state machines on moto against the fake providers, and the node agent on the instance
played over the real WebSocket handlers with the token the instance was launched with (the real
agent on a fake instance: tests/e2e/test_cloud_agent_local.py)."""

import dataclasses
import time

import pytest

from chalicelib.config import settings
from chalicelib.providers.base import instance_name
from chalicelib.services import registry
from tests.cloud_sandbox import (
    AGENT_IMAGE,
    DEPLOYMENTS,
    PUBLIC_WS,
    TERMINAL,
    assert_nothing_leaked_and_billed_exactly,
    create,
    detail,
    reaches,
)
from tests.functional.node_sim import NodeSim, age_node

NODES = "/api/v1/compute/nodes"


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


pytestmark = pytest.mark.clouds("agent")


def create_weights(api, target="runpod", **body):
    return create(
        api,
        target,
        image=None,
        weights_source="hf://acme/llm@main",
        command=["python3", "serve.py"],
        env_vars={"HF_TOKEN": "hf_secret_of_the_user"},
        **body,
    )


def launched_env(fakes, target) -> dict:
    """What the instance was given to start our agent with (pod env / cloud-init env file)."""
    if target == "runpod":
        (pod,) = fakes["runpod"].pods.values()
        assert pod["imageName"] == AGENT_IMAGE
        return pod["env"]
    (record,) = fakes["lambda"].instances.values()
    env_file = record["user_data"].split("<<'PRISM_NODE_ENV'\n", 1)[1].split("\nPRISM_NODE_ENV")[0]
    return dict(line.split("=", 1) for line in env_file.splitlines())


def agent_of(app, fakes, target, deployment_id, api) -> NodeSim:
    """The agent on the launched instance connects with its token and says hello."""
    reaches(api, deployment_id, {"provisioning"})
    env = launched_env(fakes, target)
    node_id = env["PRISM_NODE_TOKEN"].removeprefix("prismnode_").split(".")[0]
    agent = NodeSim(app, env["PRISM_NODE_TOKEN"], node_id, connection_id=f"c-{deployment_id}")
    assert agent.connect()["statusCode"] == 200
    agent.hello()
    return agent


def brought_up(agent, deployment_id):
    agent.say(type="deployment_progress", deployment_id=deployment_id, status="pulling")
    agent.say(type="deployment_progress", deployment_id=deployment_id, status="starting")
    agent.say(
        type="deployment_ready", deployment_id=deployment_id, endpoint_url="http://10.1.2.3:8000"
    )


def launched(fakes, target) -> bool:
    return bool(fakes["runpod"].pods if target == "runpod" else fakes["lambda"].instances)


def wait_launched(fakes, target, api, deployment_id):
    deadline = time.monotonic() + 20
    while not launched(fakes, target) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launched(fakes, target), detail(api, deployment_id)


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_the_instance_runs_our_agent_as_a_node_dedicated_to_the_deployment(api, app, fakes, target):
    deployment_id = create_weights(api, target)
    wait_launched(fakes, target, api, deployment_id)
    env = launched_env(fakes, target)
    assert env["PRISM_WS_URL"] == PUBLIC_WS
    # The user's secrets reach their model over the protocol, never the provider's API.
    assert "hf_secret_of_the_user" not in str(env)

    agent = agent_of(app, fakes, target, deployment_id, api)
    assert detail(api, deployment_id)["node_id"] == agent.node_id  # placed on it
    brought_up(agent, deployment_id)
    running = reaches(api, deployment_id, {"running"})
    # The provider's public endpoint, not the agent's own address.
    assert running["endpoint_url"].startswith(fakes[target].base_url)
    nodes = {n["id"]: n for n in api.get(NODES).data["items"]}
    assert nodes[agent.node_id]["name"] == instance_name(deployment_id, settings.stage)

    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    stopped = reaches(api, deployment_id, TERMINAL)
    assert stopped["status"] == "stopped"
    assert agent.node_id not in {n["id"] for n in api.get(NODES).data["items"]}
    agent.hello()  # a late hello on the dropped node's old connection is refused, not a 500
    assert agent.connect()["statusCode"] == 401  # the token died with the instance
    assert_nothing_leaked_and_billed_exactly(fakes[target], api, [deployment_id])


def test_an_agent_ready_before_the_provider_shows_the_endpoint_waits_for_it(
    api, app, fakes, monkeypatch
):
    fakes["runpod"].boot_seconds = 6  # the played agent may speak before the pod reads as up
    cloud = dataclasses.replace(registry.settings.cloud, boot_deadline_seconds={"runpod": 30})
    monkeypatch.setattr(registry, "settings", dataclasses.replace(registry.settings, cloud=cloud))
    registry.cloud.cache_clear()
    deployment_id = create_weights(api)
    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    brought_up(agent, deployment_id)
    early = detail(api, deployment_id)
    assert (early["status"], early["endpoint_url"]) == ("starting", None)
    running = reaches(api, deployment_id, {"running"})
    assert running["endpoint_url"].startswith(fakes["runpod"].base_url)
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_a_crash_the_agent_reports_tears_the_instance_down(api, app, fakes):
    deployment_id = create_weights(api)
    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    brought_up(agent, deployment_id)
    reaches(api, deployment_id, {"running"})
    agent.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason="crash",
        message="the process exited",
        exit_code=137,
    )
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "crash")
    assert failed["failure_message"] == "the process exited (exit code 137)"
    assert failed["status_message"] == "instance terminated"
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_a_pull_error_while_provisioning_ends_the_workflow_and_tears_down(api, app, fakes):
    deployment_id = create_weights(api, "lambda")
    wait_launched(fakes, "lambda", api, deployment_id)
    agent = agent_of(app, fakes, "lambda", deployment_id, api)
    agent.say(type="deployment_progress", deployment_id=deployment_id, status="pulling")
    agent.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason="pull_error",
        message="hf://acme/llm: not found",
    )
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "pull_error")
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_an_agent_that_never_connects_fails_the_deployment_after_the_grace(api, fakes):
    deployment_id = create_weights(api)
    failed = reaches(api, deployment_id, TERMINAL, timeout=40)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "provision_error")
    assert "did not connect" in failed["failure_message"]
    assert api.get(NODES).data["items"] == []  # its node was retired
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_a_silent_instance_agent_is_lost_through_teardown(api, app, client, fakes):
    deployment_id = create_weights(api)
    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    brought_up(agent, deployment_id)
    reaches(api, deployment_id, {"running"})
    age_node(agent.node_id, 400)
    client.lambda_.invoke(
        "sweep_nodes",
        client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        ),
    )
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "node_lost")
    assert failed["status_message"] == "instance terminated"
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_other_deployments_never_land_on_an_instance_agent(api, app, fakes):
    deployment_id = create_weights(api)
    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    brought_up(agent, deployment_id)
    mine = api.post(
        DEPLOYMENTS,
        {"name": "local", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]},
    ).data
    assert mine["status"] == "provisioning" and mine["node_id"] is None
    pinned = api.post(
        DEPLOYMENTS,
        {"name": "pinned", "image": "nginx", "gpu": False, "node_id": agent.node_id},
    )
    assert pinned.status_code == 400 and "runs nothing else" in pinned.data["error"]["message"]
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)


def test_without_a_public_websocket_url_the_launch_fails_with_the_setting_to_set(
    api, fakes, monkeypatch
):
    cloud = dataclasses.replace(registry.settings.cloud, public_ws_url=None)
    monkeypatch.setattr(registry, "settings", dataclasses.replace(registry.settings, cloud=cloud))
    registry.cloud.cache_clear()
    deployment_id = create_weights(api)
    failed = reaches(api, deployment_id, TERMINAL)
    assert failed["failure_reason"] == "provision_error"
    assert "PRISM_PUBLIC_WS_URL" in failed["failure_message"]
    assert not fakes["runpod"].pods  # nothing was launched
