"""Secrets at rest, through the real handlers on moto: env var values and a signed weights URL's
query string are sealed in the secrets table (KMS data key + AES-256-GCM) and never stored in
plaintext, in any table or any index; the node still gets them in deploy_model; the secret is
gone once the deployment ends (also for items older than sealed secrets, which kept plaintext);
and each function's role holds exactly the part of the secrets it uses (the IAM audit's
evaluator, per role)."""

import json
import secrets as random

import pytest

from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.services.nodes import Sweeper
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem, SecretItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.secrets import SecretStore
from prism.dev import merge_template
from tests import iam_audit
from tests.functional.node_sim import NodeSim
from tests.functional.secrets_scan import (
    RecordingManagementApi,
    Secrets,
    assert_nowhere_in_plaintext,
    secret_ids,
)

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


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


def registered_node(api, app, name="box", connection_id="conn-1") -> NodeSim:
    created = api.post(NODES, {"name": name}).data
    return NodeSim(app, created["token"], created["id"], connection_id=connection_id)


def create(api, headers=None, **body) -> dict:
    request = {"name": "m", "gpu": False, "command": ["serve"]} | body
    if not {"image", "weights_source", "resource_slug"} & set(body):
        request["image"] = "ghcr.io/acme/server:1"
    response = api.post(DEPLOYMENTS, request, headers=headers)
    assert response.status_code == 201, response.data
    return response.data


def stopped_by_node(api, node: NodeSim, deployment_id: str, reason="stopped") -> dict:
    if reason == "stopped":
        assert api.delete(f"{DEPLOYMENTS}/{deployment_id}").status_code in (200, 202)
    node.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason=reason,
        exit_code=0 if reason == "stopped" else 1,
        message=None if reason == "stopped" else "Traceback: boom",
    )
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data


# --- the tests -------------------------------------------------------------------------------


def test_no_env_value_or_signed_query_is_stored_anywhere_and_ended_deployments_lose_theirs(
    api, app, management
):
    s = Secrets()
    node = registered_node(api, app)
    # Created while no node is online: it waits, and the node's hello places it (the WebSocket
    # message function opens the secret).
    waiting = create(api, name="signed", weights_source=s.signed, env_vars=s.env)
    assert waiting["weights_source"] == s.signed_public  # shown without its query
    assert waiting["env_var_names"] == sorted(s.env)
    assert node.connect()["statusCode"] == 200
    node.hello()
    # Created with the node online: placed by the API with the secrets it was given.
    token_env = {"API_KEY": "ak_" + random.token_hex(8)}
    online = create(api, name="token", weights_source=s.token_url, env_vars=token_env)
    once = {"Idempotency-Key": "k-" + random.token_hex(4)}  # its record is in a table too
    image = create(api, headers=once, name="img", image="ghcr.io/acme/server:1", env_vars=s.env)
    never = create(api, name="never", gpu=True, gpu_type="H100", env_vars=s.env)  # no H100
    plain = create(api, name="plain", weights_source="hf://acme/llm@main")  # nothing secret

    [first] = management.deploys(waiting["id"])
    assert (first["env_vars"], first["weights_source"]) == (s.env, s.signed)
    [second] = management.deploys(online["id"])
    assert (second["env_vars"], second["weights_source"]) == (token_env, s.token_url)
    assert management.deploys(image["id"])[0]["env_vars"] == s.env
    assert management.deploys(plain["id"])[0]["env_vars"] == {}
    assert management.deploys(never["id"]) == []
    assert secret_ids() == {waiting["id"], online["id"], image["id"], never["id"]}
    everything = assert_nowhere_in_plaintext([*s.needles(), *token_env.values()])
    assert everything[settings.idempotency_table] != "[]"  # the create's record was scanned too

    # Every way to end: stopped by its node, a crash, stopped before any node had it.
    assert stopped_by_node(api, node, waiting["id"])["status"] == "stopped"
    assert stopped_by_node(api, node, online["id"], reason="crash")["status"] == "failed"
    assert api.delete(f"{DEPLOYMENTS}/{never['id']}").data["status"] == "stopped"
    assert secret_ids() == {image["id"]}  # the one still running keeps its own
    assert_nowhere_in_plaintext([*s.needles(), *token_env.values()])
    listed = api.get(DEPLOYMENTS).data["items"]
    assert all("?" not in (shown["weights_source"] or "") for shown in listed)
    for needle in [*s.needles(), *token_env.values()]:
        assert needle not in json.dumps(listed)
    # The one left running still opens to exactly what it was given.
    item = DeploymentRepository().get(image["id"])
    assert SecretStore().open(item).env == s.env


def test_an_item_older_than_sealed_secrets_still_works_and_loses_its_plaintext_when_it_ends(
    api, app, management
):
    s = Secrets()
    node = registered_node(api, app)
    owner = DeploymentRepository().get(create(api, name="probe")["id"]).owner_id
    legacy = DeploymentItem(  # as the control plane wrote them before: values on the item
        id="dep_" + "0" * 15 + "1",
        owner_id=owner,
        name="old",
        target="prism_node",
        status="provisioning",
        gpu=False,
        weights_source=s.signed,
        command=["serve"],
        deploy_config=DeployConfigAttribute(health_path="/health"),
        env_vars=s.env,
    )
    DeploymentRepository().create(legacy)
    shown = api.get(f"{DEPLOYMENTS}/{legacy.id}").data
    assert (shown["weights_source"], shown["env_var_names"]) == (s.signed_public, sorted(s.env))
    node.connect()
    node.hello()
    [deploy] = management.deploys(legacy.id)
    assert (deploy["env_vars"], deploy["weights_source"]) == (s.env, s.signed)
    assert stopped_by_node(api, node, legacy.id)["status"] == "stopped"
    ended = DeploymentRepository().get(legacy.id)
    assert ended.env_vars is None and ended.weights_source == s.signed_public
    assert ended.env_names() == []  # names went with the values: nothing of it is left
    assert_nowhere_in_plaintext(s.needles())


def test_a_refused_create_leaves_no_secret_behind_and_a_secret_opens_only_for_its_deployment(
    api, monkeypatch
):
    s = Secrets()
    first = create(api, name="first", env_vars=s.env, weights_source=s.signed)
    other = {"OTHER": "x" + random.token_hex(8)}
    monkeypatch.setattr(
        "chalicelib.services.deployments.new_deployment_id", lambda: first["id"]
    )  # a collision: the deployment's put fails, so the secret's (same transaction) does too
    refused = api.post(DEPLOYMENTS, {"name": "second", "image": "nginx", "env_vars": other})
    assert refused.status_code == 409
    assert secret_ids() == {first["id"]}
    item = DeploymentRepository().get(first["id"])
    opened = SecretStore().open(item)
    assert (opened.env, opened.weights_source(item.weights_source)) == (s.env, s.signed)
    assert_nowhere_in_plaintext([*s.needles(), *other.values()])
    # The blob is bound to its deployment: copied onto another one it does not open.
    stolen = SecretItem.get(first["id"])
    stolen.deployment_id = "dep_" + "f" * 16
    stolen.save()
    thief = DeploymentItem(id=stolen.deployment_id, env_var_names=["HF_TOKEN"])
    with pytest.raises(Exception, match="InvalidCiphertext|InvalidTag|IncorrectKey"):
        SecretStore().open(thief)


def test_the_sweep_places_with_the_secret_and_fails_a_waiting_one_deleting_its_secret(
    api, app, management
):
    s = Secrets()
    node = registered_node(api, app)
    waiting = create(api, name="later", env_vars=s.env)
    assert node.connect()["statusCode"] == 200  # online, but no hello yet: the sweep places it
    registry.sweeper().sweep()
    assert management.deploys(waiting["id"])[0]["env_vars"] == s.env
    doomed = create(api, name="doomed", gpu=True, gpu_type="H100", env_vars=s.env)
    quick = Sweeper(
        NodeRepository(),
        DeploymentRepository(),
        registry.placement(),
        settings.node_timeout_seconds,
        settings.node_lost_seconds,
        0,  # no_node at once
        registry.ending(),
        settings.deploy_ack_seconds,
    )
    quick.sweep()
    assert api.get(f"{DEPLOYMENTS}/{doomed['id']}").data["failure_reason"] == "no_node"
    assert secret_ids() == {waiting["id"]}


# --- IAM: each function's role holds exactly the part of the secrets it uses -----------------

FUNCTIONS = (
    "APIHandler",
    "WebsocketConnect",
    "WebsocketMessage",
    "WebsocketDisconnect",
    "SweepNodes",
    "ReapCloud",
    "CheckCloudHealth",
    "MeterTick",
    "MeterWorker",
    "CloudLaunch",
    "CloudPoll",
    "CloudCheckHealth",
    "CloudMarkRunning",
    "CloudProvisionFailed",
    "CloudTerminate",
    "CloudFinishTeardown",
    "CloudTeardownUnconfirmed",
)


def role_policy(function: str) -> dict:
    """What one function's role is granted: the stage policy file plus the merge template's
    policies that name its role (as prism.dev.identities gives it on the local platform)."""
    template = merge_template.merged_template("dev")["Resources"]
    role = {"Ref": ("ApiHandler" if function == "APIHandler" else function) + "Role"}
    named = {
        name: body
        for name, body in template.items()
        if body.get("Type") == "AWS::KMS::Key"
        or (body.get("Type") == "AWS::IAM::Policy" and role in body["Properties"]["Roles"])
    }
    policy = iam_audit.policy_file(settings.stage)
    policy["Statement"] += iam_audit.template_statements(settings.stage, {"Resources": named})
    return policy


def recorded(action) -> list[iam_audit.Call]:
    with iam_audit.Recorder() as recorder:
        action()
    return list(recorder.calls.values())


def secret_calls(calls) -> set[str]:
    """The actions on the secrets key or table among these calls."""
    table = f":table/{settings.secrets_table}"
    return {c.action for c in calls if c.service == "kms" or c.resource.endswith(table)}


def test_each_function_is_granted_the_secret_calls_it_makes_and_no_other_role_can_decrypt(
    api, app, management
):
    s = Secrets()
    node = registered_node(api, app)
    created = {}
    create_calls = recorded(lambda: created.update(create(api, env_vars=s.env)))
    assert node.connect()["statusCode"] == 200
    hello_calls = recorded(node.hello)
    assert api.delete(f"{DEPLOYMENTS}/{created['id']}").data["status"] == "stopping"
    stop_calls = recorded(  # the node's report: the message function ends it
        lambda: node.say(type="deployment_stopped", deployment_id=created["id"], reason="stopped")
    )
    waiting = create(api, name="waits", gpu=True, gpu_type="H100", env_vars=s.env)
    delete_calls = recorded(lambda: api.delete(f"{DEPLOYMENTS}/{waiting['id']}"))

    # The API seals and may delete (a stop before placement); it never decrypts.
    assert secret_calls(create_calls) == {"kms:GenerateDataKey", "dynamodb:PutItem"}
    assert secret_calls(delete_calls) == {"dynamodb:DeleteItem"}
    # The node's hello placed it: the message function opened it; its report ended it.
    assert secret_calls(hello_calls) == {"kms:Decrypt", "dynamodb:GetItem"}
    assert secret_calls(stop_calls) == {"dynamodb:DeleteItem"}
    for function, calls in (
        ("APIHandler", create_calls + delete_calls),
        ("WebsocketMessage", hello_calls + stop_calls),
    ):
        found = iam_audit.denials(role_policy(function), calls)
        assert not found, iam_audit.report(found)

    decrypt = next(c for c in hello_calls if c.action == "kms:Decrypt")
    table = f":table/{settings.secrets_table}"
    get = next(c for c in hello_calls if c.action == "dynamodb:GetItem" and table in c.resource)
    generate = next(c for c in create_calls if c.action == "kms:GenerateDataKey")
    put = next(c for c in create_calls if c.action == "dynamodb:PutItem" and table in c.resource)
    delete = next(c for c in delete_calls if c.action == "dynamodb:DeleteItem")
    for function in FUNCTIONS:
        policy = role_policy(function)
        for call, allowed in (
            (decrypt, merge_template.OPENS_SECRETS),
            (get, merge_template.OPENS_SECRETS),
            (generate, merge_template.SEALS_SECRETS),
            (put, merge_template.SEALS_SECRETS),
            (delete, merge_template.ENDS_DEPLOYMENTS),
        ):
            verdict, why = iam_audit.decide(policy, call)
            assert (verdict == "allow") is (function in allowed), (function, call.action, why)
    assert "APIHandler" not in merge_template.OPENS_SECRETS  # internet-facing: never opens
