"""Secrets at rest on cloud targets: the real provision and teardown state machines on moto
against the fake providers. An image launched on RunPod or a Lambda VM still gets the
deployment's env vars (the launch step opens the sealed secret), the agent on an instance gets
them and the signed weights URL in deploy_model, no table or index holds them in plaintext, and
the teardown that ends the deployment deletes its secret."""

import shlex
import time

import pytest

from chalicelib.services import registry
from tests.cloud_sandbox import (
    AGENT_IMAGE,
    DEPLOYMENTS,
    TERMINAL,
    assert_nothing_leaked_and_billed_exactly,
    create,
    reaches,
)
from tests.functional.node_sim import NodeSim
from tests.functional.secrets_scan import (
    RecordingManagementApi,
    Secrets,
    assert_nowhere_in_plaintext,
    secret_ids,
)


def launched_pod(fakes, api, deployment_id) -> dict:
    deadline = time.monotonic() + 20
    while not fakes["runpod"].pods and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fakes["runpod"].pods, api.get(f"{DEPLOYMENTS}/{deployment_id}").data
    (pod,) = fakes["runpod"].pods.values()
    return pod


pytestmark = pytest.mark.clouds("agent")


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def management(aws_backend, monkeypatch):
    recording = RecordingManagementApi()
    for channel in (registry.placement()._channel, registry.node_channel()):
        monkeypatch.setattr(channel, "_client_factory", lambda: recording)
    return recording


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_an_image_launch_gets_the_env_and_its_secret_ends_with_the_teardown(api, fakes, target):
    s = Secrets()
    deployment_id = create(api, target, env_vars=s.env)
    reaches(api, deployment_id, {"running"})
    if target == "runpod":
        (pod,) = fakes["runpod"].pods.values()
        assert pod["env"] == s.env  # the pod's env, as the user gave it
    else:
        (record,) = fakes["lambda"].instances.values()
        for name, value in s.env.items():  # docker run -e NAME=value in the VM's cloud-init
            assert f"-e {shlex.quote(f'{name}={value}')}" in record["user_data"]
    assert secret_ids() == {deployment_id}
    assert_nowhere_in_plaintext(s.needles())
    assert api.delete(f"{DEPLOYMENTS}/{deployment_id}").status_code == 202
    assert reaches(api, deployment_id, TERMINAL)["status"] == "stopped"
    assert secret_ids() == set()  # the teardown's end deleted it
    assert_nowhere_in_plaintext(s.needles())
    assert_nothing_leaked_and_billed_exactly(fakes[target], api, [deployment_id])


def test_the_agent_on_an_instance_gets_the_signed_url_and_env_the_provider_never_sees(
    api, app, fakes, management
):
    s = Secrets()
    deployment_id = create(
        api,
        "runpod",
        image=None,
        weights_source=s.signed,
        command=["python3", "serve.py"],
        env_vars=s.env,
    )
    shown = api.get(f"{DEPLOYMENTS}/{deployment_id}").data
    assert shown["weights_source"] == s.signed_public
    pod = launched_pod(fakes, api, deployment_id)
    assert pod["imageName"] == AGENT_IMAGE
    env = pod["env"]
    assert not {*s.env.values(), s.signature} & {*env.values(), *env}  # the agent's env only
    reaches(api, deployment_id, {"provisioning"})
    node_id = env["PRISM_NODE_TOKEN"].removeprefix("prismnode_").split(".")[0]
    agent = NodeSim(app, env["PRISM_NODE_TOKEN"], node_id, connection_id=f"c-{deployment_id}")
    assert agent.connect()["statusCode"] == 200
    agent.hello()
    [deploy] = management.deploys(deployment_id)
    assert (deploy["env_vars"], deploy["weights_source"]) == (s.env, s.signed)
    assert_nowhere_in_plaintext(s.needles())
    agent.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason="pull_error",
        message="https://weights.example.com/models/m.bin answered HTTP 403",
    )
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "pull_error")
    assert secret_ids() == set()
    assert_nowhere_in_plaintext(s.needles())
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])
