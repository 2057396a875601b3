"""The deployments REST API through chalice.test.Client on moto; every response is also checked
against the OpenAPI document (see conftest.Api)."""

import json

import pytest

from chalicelib.protocol import DEFAULT_MODEL_PORT
from chalicelib.services import registry
from chalicelib.store.deployments import DeploymentRepository
from tests.functional.node_sim import NodeSim

BASE = "/api/v1/compute/deployments"
# What a deploy_config holds when only port and health_path are given.
CONFIG_DEFAULTS = {
    "weights_allow_patterns": None,
    "weights_ignore_patterns": None,
    "restart": "on-failure",
    "max_restarts": 3,
    "unhealthy_timeout_s": 300,
    "auth": "key",
}
IMAGE_FORM = {
    "name": "web",
    "image": "ghcr.io/acme/model-server:1.2",
    "target": "runpod",
    "gpu_type": "A100",
    "deploy_config": {"port": 8080, "health_path": "/healthz"},
    "budget_max_usd": 12.5,
}
RUNTIME_FORM = {
    "name": "llama",
    "weights_source": "hf://meta-llama/Llama-3.1-8B:main",
    "framework": "vllm",
    "command": ["vllm", "serve", "/weights"],
    "gpu": True,
    "target": "prism_node",
    "deploy_config": {"port": 8000, "health_path": "/health"},
    "budget_max_usd": 3,
}


def create(api, **body):
    response = api.post(BASE, {"name": "m", "image": "nginx:1.27"} | body)
    assert response.status_code == 201, response.data
    return response.data


# --- the three create forms -------------------------------------------------------------


def test_image_form_creates_a_provisioning_deployment(api):
    response = api.post(BASE, IMAGE_FORM)
    assert response.status_code == 201
    d = response.data
    assert d["id"].startswith("dep_")
    assert d["status"] == "provisioning"
    assert (d["image"], d["target"], d["gpu_type"]) == (IMAGE_FORM["image"], "runpod", "A100")
    assert d["deploy_config"] == {"port": 8080, "health_path": "/healthz"} | CONFIG_DEFAULTS
    assert d["budget_max_usd"] == 12.5 and d["cost_accrued_usd"] == 0
    assert d["failure_reason"] is None and d["endpoint_url"] is None


def test_runtime_form_records_the_canonical_weights_source(api):
    d = api.post(BASE, RUNTIME_FORM).data
    assert d["weights_source"] == "hf://meta-llama/Llama-3.1-8B@main"  # KServe ':' accepted
    assert d["command"] == ["vllm", "serve", "/weights"]
    assert d["framework"] == "vllm" and d["gpu"] is True


def test_marketplace_form_fills_the_recipe_and_keeps_overrides(api):
    response = api.post(
        BASE,
        {
            "name": "mace",
            "resource_slug": "mace-mp-0",
            "deploy_config": {"port": 9001, "health_path": "/ready"},
        },
    )
    assert response.status_code == 201
    d = response.data
    assert d["resource_slug"] == "mace-mp-0"
    assert d["weights_source"].startswith("https://github.com/ACEsuit/mace-mp/")
    assert d["framework"] == "custom" and d["command"] == ["python", "-m", "mace_serve"]
    assert d["deploy_config"] == {"port": 9001, "health_path": "/ready"} | CONFIG_DEFAULTS


def test_marketplace_form_with_unknown_slug_names_the_field(api):
    response = api.post(BASE, {"name": "x", "resource_slug": "no-such-model"})
    assert response.status_code == 400
    assert "resource_slug" in response.data["error"]["fields"]


def test_env_var_values_are_never_returned(api):
    d = create(api, env_vars={"HF_TOKEN": "hf_supersecret", "MODE": "fast"})
    assert d["env_var_names"] == ["HF_TOKEN", "MODE"]
    for response in (api.get(f"{BASE}/{d['id']}"), api.get(BASE)):
        assert "hf_supersecret" not in response.body.decode()


def test_the_marketplace_recipe_keeps_its_port(api):
    d = create(api, name="tiny", resource_slug="tiny-regressor", image=None)
    assert d["deploy_config"]["port"] == 9000


def test_a_partial_deploy_config_overrides_the_recipe_field_by_field(api):
    d = create(
        api,
        name="tiny",
        resource_slug="tiny-regressor",
        image=None,
        deploy_config={"health_path": "/ready", "restart": "never"},
    )
    config = d["deploy_config"]
    assert (config["port"], config["health_path"], config["restart"]) == (9000, "/ready", "never")


# --- the port: picked by the node unless given; fixed on cloud targets -------------------


class RecordingManagementApi:
    """The WebSocket management API, keeping what was posted to each connection."""

    def __init__(self):
        self.posted: list[dict] = []

    def post_to_connection(self, ConnectionId, Data):  # noqa: N803 - boto3's names
        self.posted.append(json.loads(Data))


@pytest.fixture
def sent(api, monkeypatch):
    """What the control plane sends the user's one connected node."""
    from app import app

    management = RecordingManagementApi()
    monkeypatch.setattr(registry.placement()._channel, "_client_factory", lambda: management)
    node = api.post("/api/v1/compute/nodes", {"name": "box"}).data
    sim = NodeSim(app, node["token"], node["id"])
    assert sim.connect()["statusCode"] == 200
    sim.hello()
    return management.posted


@pytest.mark.parametrize("config", [None, {"health_path": "/up"}, {"port": None}])
def test_without_a_port_a_node_deployment_stores_none_and_the_node_picks(api, sent, config):
    body = {"weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
    d = create(api, image=None, **body, **({"deploy_config": config} if config else {}))
    assert d["deploy_config"]["port"] is None
    assert DeploymentRepository().get(d["id"]).deploy_config.port is None
    [deploy] = [m for m in sent if m["type"] == "deploy_model"]
    assert deploy["deployment_id"] == d["id"]
    assert "port" not in deploy["deploy_config"]  # absent: the agent picks a free one
    assert deploy["deploy_config"]["restart"] == "on-failure"


def test_a_given_port_and_restart_policy_reach_the_node(api, sent):
    config = {"port": 9100, "restart": "never", "max_restarts": 0, "unhealthy_timeout_s": 0}
    d = create(api, weights_source="/srv/m", image=None, gpu=False, deploy_config=config)
    assert d["deploy_config"] == CONFIG_DEFAULTS | {"health_path": "/health"} | config
    [deploy] = [m for m in sent if m["type"] == "deploy_model"]
    assert {k: deploy["deploy_config"][k] for k in config} == config


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_a_cloud_deployment_without_a_port_gets_the_default(api, target):
    d = create(api, target=target, gpu_type="A100", budget_max_usd=5, deploy_config={"port": None})
    assert d["deploy_config"]["port"] == DEFAULT_MODEL_PORT == 8000
    assert DeploymentRepository().get(d["id"]).deploy_config.port == DEFAULT_MODEL_PORT


# --- validation: a clear 400 naming the field, never a 500 -------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name", "image": "nginx"}, "name"),
        ({"name": "x" * 64, "image": "nginx"}, "name"),
        ({"name": "-x", "image": "nginx"}, "name"),
        ({"name": "m", "image": "nginx", "deploy_config": {"port": 0}}, "deploy_config.port"),
        ({"name": "m", "image": "nginx", "deploy_config": {"port": 65536}}, "deploy_config.port"),
        ({"name": "m", "image": "nginx", "deploy_config": {"port": "80"}}, "deploy_config.port"),
        (
            {"name": "m", "image": "nginx", "deploy_config": {"health_path": "health"}},
            "deploy_config.health_path",
        ),
        (
            {"name": "m", "image": "nginx", "deploy_config": {"restart": "sometimes"}},
            "deploy_config.restart",
        ),
        (
            {"name": "m", "image": "nginx", "deploy_config": {"max_restarts": -1}},
            "deploy_config.max_restarts",
        ),
        (
            {"name": "m", "image": "nginx", "deploy_config": {"unhealthy_timeout_s": "60"}},
            "deploy_config.unhealthy_timeout_s",
        ),
        ({"name": "m", "image": "nginx", "budget_max_usd": 0}, "budget_max_usd"),
        ({"name": "m", "image": "nginx", "budget_max_usd": -5}, "budget_max_usd"),
        ({"name": "m", "image": "nginx", "command": "python serve.py"}, "command"),
        ({"name": "m", "image": "nginx", "command": ["python", 3]}, "command.1"),
        ({"name": "m", "image": "nginx", "surprise": True}, "surprise"),
        ({"name": "m", "image": "nginx", "target": "aws"}, "target"),
        ({"name": "m", "image": "Not An Image!"}, "image"),
        ({"name": "m", "weights_source": "ftp://host/file"}, "weights_source"),
        ({"name": "m", "weights_source": "hf://just-a-name"}, "weights_source"),
        ({"name": "m", "weights_source": "r2://B/x"}, "weights_source"),
        ({"name": "m", "weights_source": "http://host/w.bin"}, "weights_source"),
        ({"name": "m", "weights_source": "relative/path"}, "weights_source"),
        ({"name": "m", "weights_source": "/models/../etc"}, "weights_source"),
        ({"name": "m", "image": "nginx", "env_vars": {"1BAD": "x"}}, "env_vars.1BAD.[key]"),
        ({"name": "m"}, "image"),
        ({"name": "m", "image": "nginx", "weights_source": "hf://a/b"}, "image"),
        ({"image": "nginx"}, "name"),
        ({"name": "m", "image": "nginx", "target": "lambda", "gpu_type": "A10"}, "budget_max_usd"),
        ({"name": "m", "image": "nginx", "target": "runpod", "budget_max_usd": 5}, "gpu_type"),
        (
            {
                "name": "m",
                "weights_source": "/srv/models/x",
                "target": "runpod",
                "gpu_type": "A100",
                "budget_max_usd": 5,
            },
            "weights_source",
        ),
    ],
)
def test_invalid_create_is_a_400_naming_the_field(api, body, field):
    response = api.post(BASE, body)
    assert response.status_code == 400, response.data
    error = response.data["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error
    assert error["message"]


def test_env_vars_too_large_for_one_deploy_model_message_are_a_400_and_nothing_is_created(api):
    # Each value is allowed (32 KiB), together they would not fit one WebSocket message.
    env_vars = {f"BLOB_{n}": "x" * 30000 for n in range(4)}
    response = api.post(BASE, {"name": "m", "image": "nginx", "env_vars": env_vars})
    assert response.status_code == 400, response.data
    assert "env_vars" in response.data["error"]["fields"]
    assert "x" * 100 not in response.body.decode()  # values never echoed
    assert api.get(BASE).data["items"] == []
    fits = {f"BLOB_{n}": "x" * 30000 for n in range(3)}
    assert api.post(BASE, {"name": "m", "image": "nginx", "env_vars": fits}).status_code == 201


def test_secret_values_are_not_echoed_in_validation_errors(api):
    body = {"name": "m", "image": "nginx", "env_vars": {"TOKEN": 12345678}}
    response = api.post(BASE, body)
    assert response.status_code == 400
    assert "12345678" not in response.body.decode()


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"a string"', '{"name": ', "\xff\xfe"])
def test_malformed_body_is_a_400(api, raw):
    response = api.post(BASE, raw=raw)
    assert response.status_code == 400
    assert response.data["error"]["code"] == "validation_error"


def test_plain_http_weights_need_the_explicit_opt_in(api):
    body = {"name": "m", "weights_source": "http://mirror.local/w.bin"}
    assert api.post(BASE, body).status_code == 400
    response = api.post(BASE, body | {"allow_insecure_http": True})
    assert response.status_code == 201
    assert response.data["weights_source"] == "http://mirror.local/w.bin"


# --- auth and tenancy ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer prism_not-a-real-key"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", BASE),
        ("POST", BASE),
        ("GET", f"{BASE}/dep_1"),
        ("DELETE", f"{BASE}/dep_1"),
        ("GET", f"{BASE}/dep_1/health"),
        ("POST", f"{BASE}/dep_1/endpoint-keys"),
        ("GET", "/api/v1/marketplace/resources"),
    ],
)
def test_every_route_needs_a_valid_key(api, headers, method, path):
    response = api.request(
        method, path, body={"name": "m", "image": "nginx"}, key=None, headers=headers
    )
    assert response.status_code == 401
    assert response.data["error"]["code"] == "unauthorized"


def test_another_owners_deployment_is_a_404_everywhere(api, other_api):
    d = create(api)
    for method, path in [
        ("GET", f"{BASE}/{d['id']}"),
        ("DELETE", f"{BASE}/{d['id']}"),
        ("GET", f"{BASE}/{d['id']}/health"),
        ("POST", f"{BASE}/{d['id']}/endpoint-keys"),
    ]:
        response = other_api.request(method, path)
        assert response.status_code == 404
        assert response.data["error"]["code"] == "not_found"
    assert other_api.get(BASE).data["items"] == []
    assert api.get(f"{BASE}/{d['id']}").data["status"] == "provisioning"  # untouched


@pytest.mark.parametrize(
    "deployment_id", ["dep_doesnotexist", "dep_0123456789abcdef", "x" * 5000, "%C3%A9t%C3%A9"]
)
def test_unknown_or_malformed_id_is_a_404(api, deployment_id):
    for method, path in [
        ("GET", f"{BASE}/{deployment_id}"),
        ("DELETE", f"{BASE}/{deployment_id}"),
        ("POST", f"{BASE}/{deployment_id}/endpoint-keys"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404
        assert response.data["error"]["code"] == "not_found"


# --- list: newest first, status filter, pagination -------------------------------------


def test_list_is_newest_first_and_pages_without_gaps_or_repeats(api):
    ids = [create(api, name=f"m{i}")["id"] for i in range(7)]
    seen, token = [], None
    while True:
        path = f"{BASE}?limit=3" + (f"&next_token={token}" if token else "")
        page = api.get(path).data
        seen += [d["id"] for d in page["items"]]
        token = page["next_token"]
        if not token:
            break
    assert seen == list(reversed(ids))


def test_status_filter_merges_statuses_newest_first_across_pages(api):
    created = [create(api, name=f"m{i}")["id"] for i in range(9)]
    stopped = set(created[::3])  # every third one is stopped
    for deployment_id in stopped:
        assert api.delete(f"{BASE}/{deployment_id}").status_code == 200

    def collect(query):
        seen, token = [], None
        while True:
            page = api.get(f"{BASE}?{query}&limit=2" + (f"&next_token={token}" if token else ""))
            assert page.status_code == 200, page.data
            seen += [(d["id"], d["status"]) for d in page.data["items"]]
            token = page.data["next_token"]
            if not token:
                return seen

    assert [i for i, _ in collect("status=stopped")] == [
        i for i in reversed(created) if i in stopped
    ]
    both = collect("status=stopped,provisioning")
    assert [i for i, _ in both] == list(reversed(created))
    assert {s for _, s in both} == {"stopped", "provisioning"}
    assert collect("status=stopped&status=provisioning") == both  # repeated, as browsers send


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=sleeping", "status.0"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("next_token=%%%garbage", "next_token"),
        ("next_token=eyJmIjoiIn0", "next_token"),
        ("bogus=1", "bogus"),
        ("limit=5&limit=6", "limit"),
    ],
)
def test_bad_list_queries_are_400(api, query, field):
    response = api.get(f"{BASE}?{query}")
    assert response.status_code == 400
    assert field in response.data["error"]["fields"]


def test_a_token_only_works_with_its_own_filter(api):
    for i in range(3):
        create(api, name=f"m{i}")
    token = api.get(f"{BASE}?limit=1").data["next_token"]
    response = api.get(f"{BASE}?limit=1&status=running&next_token={token}")
    assert response.status_code == 400
    assert "filter" in response.data["error"]["message"]


def test_a_token_cannot_reach_another_owners_deployments(api, other_api):
    for i in range(3):
        create(api, name=f"m{i}")
    token = api.get(f"{BASE}?limit=1").data["next_token"]
    page = other_api.get(f"{BASE}?limit=5&next_token={token}")
    assert page.status_code == 400  # bound to its owner (issue 15): never another's page
    assert "next_token" in page.data["error"]["fields"]


# --- stop and health ------------------------------------------------------------------


def test_stopping_an_unassigned_deployment_is_immediate_and_idempotent(api):
    d = create(api)
    first = api.delete(f"{BASE}/{d['id']}")
    assert (first.status_code, first.data["status"]) == (200, "stopped")
    again = api.delete(f"{BASE}/{d['id']}")
    assert (again.status_code, again.data["status"]) == (200, "stopped")


def test_stopping_a_deployment_handed_to_a_node_waits_in_stopping(api):
    from chalicelib.store.deployments import DeploymentRepository

    d = create(api)
    repo = DeploymentRepository()
    item = repo.get(d["id"])
    repo.transition(
        item, __import__("chalicelib.lifecycle").lifecycle.Status.PULLING, node_id="node-1"
    )
    first = api.delete(f"{BASE}/{d['id']}")
    assert (first.status_code, first.data["status"]) == (202, "stopping")
    again = api.delete(f"{BASE}/{d['id']}")
    assert (again.status_code, again.data["status"]) == (202, "stopping")


def test_health_reports_the_last_known_state_as_stale(api):
    d = create(api)
    health = api.get(f"{BASE}/{d['id']}/health").data
    assert health == {
        "deployment_id": d["id"],
        "status": "provisioning",
        "healthy": None,
        "consecutive_failures": 0,
        "latency_ms": None,
        "checked_at": None,
        "stale": True,
    }


# --- idempotency --------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_same_deployment(api):
    headers = {"Idempotency-Key": "create-web-1"}
    first = api.post(BASE, IMAGE_FORM, headers=headers)
    second = api.post(BASE, IMAGE_FORM, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.data["id"] == second.data["id"]
    assert len(api.get(BASE).data["items"]) == 1


def test_same_idempotency_key_with_another_body_is_422(api):
    headers = {"Idempotency-Key": "k1"}
    assert api.post(BASE, IMAGE_FORM, headers=headers).status_code == 201
    response = api.post(BASE, IMAGE_FORM | {"name": "other"}, headers=headers)
    assert response.status_code == 422
    assert response.data["error"]["code"] == "idempotency_key_reused"


def test_idempotency_keys_are_per_owner(api, other_api):
    headers = {"Idempotency-Key": "shared-key"}
    mine = api.post(BASE, IMAGE_FORM, headers=headers).data
    theirs = other_api.post(BASE, IMAGE_FORM, headers=headers).data
    assert mine["id"] != theirs["id"]


def test_a_failed_create_does_not_burn_the_idempotency_key(api):
    headers = {"Idempotency-Key": "retry-me"}
    bad = api.post(BASE, {"name": "m", "resource_slug": "nope"}, headers=headers)
    assert bad.status_code == 400
    assert api.post(BASE, IMAGE_FORM, headers=headers).status_code == 201


def test_an_oversized_idempotency_key_is_400(api):
    response = api.post(BASE, IMAGE_FORM, headers={"Idempotency-Key": "k" * 300})
    assert response.status_code == 400


# --- the error shape holds for Chalice's own errors too ------------------------------


def test_wrong_content_type_gets_the_error_shape(api):
    response = api.client.http.post(
        BASE,
        body="name=m",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {api.key}"},
    )
    assert response.status_code == 415
    assert __import__("json").loads(response.body)["error"]["code"] == "unsupportedmediatype"


def test_logs_of_a_deployment_no_node_has_taken_yet_say_why_there_are_none(api):
    waiting = create(api, name="waiting")  # no node is online: it waits for one
    response = api.get(f"{BASE}/{waiting['id']}/logs")
    assert response.status_code == 409
    assert "not been placed on a node" in response.data["error"]["message"]
