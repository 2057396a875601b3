"""Secrets at rest on the real local platform (each function in its own process with its own
role, IAM enforced by the moto server): deployments created with secret env values and a
signed weights URL are placed by the WebSocket message function, which opens the sealed secret
with KMS; a node gets them in deploy_model; stopped, their secrets are deleted; and a raw scan
of every table and every index finds no secret in plaintext. Roles that do not open secrets are
refused by the local AWS, and the key, the alias and a waiting deployment's secret survive a
restart of the platform. An image on the fake RunPod gets its env from the launch step."""

import json
import time

import pytest
import requests
import websocket
from botocore.exceptions import ClientError

from chalicelib.protocol import DeploymentStopped, NodeHello
from prism.dev.fakes.__main__ import RUNPOD_KEY
from tests.e2e.conftest import free_port, start_platform, stop_platform
from tests.functional.secrets_scan import Secrets, assert_nowhere_in_plaintext

DEPLOYMENTS = "/api/v1/compute/deployments"
SECRETS_TABLE = "prism-dev-secrets"


class Node:
    """A node played over the platform's real WebSocket API."""

    def __init__(self, platform, registered: dict):
        self.id = registered["id"]
        self.ws = websocket.create_connection(
            platform.ws_url, header=[f"Authorization: Bearer {registered['token']}"], timeout=30
        )

    def hello(self) -> None:
        self.ws.send(NodeHello(node_id=self.id, agent_version="test").to_json())

    def say(self, message) -> None:
        self.ws.send(message.to_json())

    def receive(self, kind: str, deployment_id: str, within: float = 20) -> dict:
        """The next `kind` message about the deployment; other messages are skipped."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                message = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if message.get("type") == kind and message.get("deployment_id") == deployment_id:
                return message
        raise AssertionError(f"no {kind} for {deployment_id} within {within} s")

    def close(self) -> None:
        self.ws.close()


class Api:
    def __init__(self, platform):
        self.url, self.key = platform.api_url + DEPLOYMENTS, platform.api_key

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def create(self, **body) -> dict:
        request = {"name": "m", "gpu": False, "command": ["python3", "serve.py"]} | body
        response = requests.post(self.url, json=request, headers=self._headers(), timeout=30)
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, deployment_id: str) -> dict:
        return requests.get(
            f"{self.url}/{deployment_id}", headers=self._headers(), timeout=30
        ).json()

    def delete(self, deployment_id: str) -> requests.Response:
        return requests.delete(f"{self.url}/{deployment_id}", headers=self._headers(), timeout=30)

    def reaches(self, deployment_id: str, status: str, within: float = 30) -> dict:
        deadline = time.monotonic() + within
        while (shown := self.get(deployment_id))["status"] != status:
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        return shown


def secret_ids(platform) -> set[str]:
    items = platform.aws("dynamodb", "operator").scan(TableName=SECRETS_TABLE)["Items"]
    return {item["deployment_id"]["S"] for item in items}


def assert_refused(call, **kwargs) -> None:
    with pytest.raises(ClientError, match="AccessDenied|not authorized"):
        call(**kwargs)


def test_secrets_are_sealed_opened_only_by_their_functions_and_gone_with_the_deployment(
    tmp_path_factory,
):
    s = Secrets()
    directory = tmp_path_factory.mktemp("secrets")
    platform = start_platform(directory)
    try:
        api = Api(platform)
        registered = platform.register_node("sealed")
        # Created while no node is connected, placed when the node says hello: WebsocketMessage
        # opens the secret (KMS Decrypt as its own role); the API function only seals.
        signed = api.create(name="signed", weights_source=s.signed, env_vars=s.env)
        assert signed["weights_source"] == s.signed_public
        assert signed["env_var_names"] == sorted(s.env)
        unplaced = api.create(
            name="never", image="nginx", gpu=True, gpu_type="H100", env_vars=s.env
        )
        later = platform.register_node("later")  # offline until after the restart
        kept = api.create(
            name="kept", weights_source=s.token_url, env_vars=s.env, node_id=later["id"]
        )
        node = Node(platform, registered)
        node.hello()
        deploy = node.receive("deploy_model", signed["id"])
        assert (deploy["env_vars"], deploy["weights_source"]) == (s.env, s.signed)
        assert secret_ids(platform) == {signed["id"], unplaced["id"], kept["id"]}
        assert_nowhere_in_plaintext(s.needles(), platform.aws("dynamodb", "operator"))

        # Ended by its node's report (WebsocketMessage), and before placement (APIHandler).
        assert api.delete(signed["id"]).status_code == 202
        node.receive("stop_deployment", signed["id"])
        node.say(DeploymentStopped(deployment_id=signed["id"], reason="stopped", exit_code=0))
        api.reaches(signed["id"], "stopped")
        assert api.delete(unplaced["id"]).json()["status"] == "stopped"
        assert secret_ids(platform) == {kept["id"]}
        assert_nowhere_in_plaintext(s.needles(), platform.aws("dynamodb", "operator"))

        # The local AWS refuses the roles that do not open secrets, as AWS would.
        sealed = platform.aws("dynamodb", "operator").get_item(
            TableName=SECRETS_TABLE, Key={"deployment_id": {"S": kept["id"]}}
        )["Item"]
        decrypt = {
            "CiphertextBlob": sealed["data_key"]["B"],
            "KeyId": sealed["key_id"]["S"],
            "EncryptionContext": {"prism:deployment_id": kept["id"]},
        }
        assert platform.aws("kms", "WebsocketMessage").decrypt(**decrypt)["Plaintext"]
        for function in ("APIHandler", "MeterTick", "CloudPoll", "WebsocketConnect"):
            assert_refused(platform.aws("kms", function).decrypt, **decrypt)
        key = {"deployment_id": {"S": kept["id"]}}
        assert_refused(
            platform.aws("dynamodb", "APIHandler").get_item, TableName=SECRETS_TABLE, Key=key
        )
        assert_refused(platform.aws("dynamodb", "MeterTick").scan, TableName=SECRETS_TABLE)
        node.close()
    finally:
        stop_platform(platform)

    # The key, its alias and the waiting deployment's secret are kept with the local AWS.
    platform = start_platform(directory)
    try:
        node = Node(platform, later)
        node.hello()
        deploy = node.receive("deploy_model", kept["id"])
        assert (deploy["env_vars"], deploy["weights_source"]) == (s.env, s.token_url)
        node.close()
    finally:
        stop_platform(platform)


def test_an_image_launched_on_runpod_gets_its_env_from_the_launch_step_and_loses_its_secret(
    tmp_path_factory,
):
    """The provision state machine's launch step (CloudLaunch, its own role) opens the secret
    and gives the pod its env; the teardown's end (CloudFinishTeardown) deletes the secret."""
    s = Secrets()
    root = tmp_path_factory.mktemp("secrets-cloud")
    runpod = free_port()
    platform = start_platform(
        root, tick=1, args=("--no-node", "--fake-clouds", "--runpod-port", str(runpod))
    )
    try:
        api = Api(platform)
        created = api.create(
            name="img",
            target="runpod",
            image="ghcr.io/acme/server:1",
            gpu=True,
            gpu_type="A100",
            budget_max_usd=5,
            env_vars=s.env,
        )
        deadline = time.monotonic() + 60
        while not (pods := _pods(runpod)):
            assert time.monotonic() < deadline, api.get(created["id"])
            time.sleep(0.3)
        [pod] = pods
        assert sorted(pod["env"]) == sorted(f"{k}={v}" for k, v in s.env.items())
        assert secret_ids(platform) == {created["id"]}
        assert api.delete(created["id"]).status_code == 202
        ended = api.reaches(created["id"], "stopped", within=90)
        assert ended["failure_reason"] is None
        assert secret_ids(platform) == set()
        assert_nowhere_in_plaintext(s.needles(), platform.aws("dynamodb", "operator"))
    finally:
        stop_platform(platform)


def _pods(port: int) -> list[dict]:
    """The pods the fake RunPod runs, asked through its own API."""
    answer = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": "query { myself { pods { id name env } } }"},
        headers={"Authorization": f"Bearer {RUNPOD_KEY}"},
        timeout=10,
    )
    return answer.json()["data"]["myself"]["pods"]
