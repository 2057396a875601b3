"""Whatever a client sends, the answer is a 2xx or a clear 4xx in our error shape, never a 500.
Random bodies and queries first, then one regression test for each hostile input found (issue
15): bodies and frames nested 10,000 deep, content over one message, trailing newlines, health
paths, loose booleans, foreign next_tokens, and what the local API Gateway answers itself."""

import base64
import json
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.protocol import DEPLOY_CONTENT_BUDGET_BYTES, MAX_MESSAGE_BYTES
from chalicelib.services.pagination import _digest

BASE = "/api/v1/compute/deployments"
FIELDS = [
    "name",
    "image",
    "resource_slug",
    "weights_source",
    "target",
    "framework",
    "command",
    "gpu",
    "gpu_type",
    "deploy_config",
    "env_vars",
    "budget_max_usd",
    "allow_insecure_http",
    "port",
    "zzz",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        ["nginx", "hf://a/b", "/srv/m", "prism_node", "mace-mp-0", "runpod", "A100", "m"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["port", "health_path", "X", "1"]), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_clean(response):
    assert response.status_code < 500, response.body
    if response.status_code >= 400:
        assert set(json.loads(response.body)["error"]) >= {"code", "message"}


@FUZZ
@given(body=bodies)
def test_random_create_bodies_never_500(api, body):
    assert_clean(api.post(BASE, body))


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["status", "limit", "next_token", "x"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789,-_=", max_size=20),
        max_size=3,
    )
)
def test_random_list_queries_never_500(api, query):
    path = BASE + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    assert_clean(api.get(path))


# --- regressions, each found by a hostile request ----------------------------------------

NODES = "/api/v1/compute/nodes"
DEEP = 10_000


def assert_400(response, field=None):
    assert response.status_code == 400, response.body
    error = json.loads(response.body)["error"]
    assert error["code"] == "validation_error" and error["message"]
    if field is not None:
        assert field in error.get("fields", {}), error
    return error


@pytest.mark.parametrize(
    "raw",
    [
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        '{"name": "m", "image": "nginx", "env_vars": ' + "[" * DEEP + "]" * DEEP + "}",
        '{"name": "m", "deploy_config": ' + '{"x":' * DEEP + "1" + "}" * DEEP + "}",
    ],
)
def test_a_body_nested_10000_deep_is_a_400(api, raw):
    error = assert_400(api.post(BASE, raw=raw))
    assert "nested" in error["message"]
    assert_400(api.post(NODES, raw=raw))


def test_a_websocket_frame_nested_10000_deep_gets_an_error_frame_and_the_link_stays(api):
    from app import app
    from chalicelib.services import registry
    from tests.functional.node_sim import NodeSim

    node = api.post(NODES, {"name": "box"}).data
    sim = NodeSim(app, node["token"], node["id"])
    assert sim.connect()["statusCode"] == 200
    handler = registry.node_message_handler()
    for frame in (
        "[" * DEEP + "]" * DEEP,
        '{"type": "heartbeat", "id": "h", "x": ' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
    ):
        [reply] = handler.handle(sim.connection_id, frame)
        assert (reply.type, reply.code) == ("error", "malformed")
    assert handler.handle(sim.connection_id, '{"type": "heartbeat", "id": "h2"}') == []
    sim.say(type="heartbeat")  # through the real handler: no exception, no reply needed


def _size_body(**fields):
    return {"name": "m", "weights_source": "/srv/m", "gpu": False} | fields


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        # every value within its own limit (32,768), together too big for one message
        ({"env_vars": {f"V{n}": "x" * 32_000 for n in range(4)}}, "env_vars"),
        ({"command": ["y" * 4096] * 25}, "command"),
        # command the largest, with the glob patterns also near their limits
        (
            {
                "command": ["y" * 4096] * 20,
                "deploy_config": {"weights_allow_patterns": ["*" * 256] * 64},
            },
            "command",
        ),
        (
            {
                "env_vars": {"A": "é" * 24_000, "B": "é" * 24_000},  # 2 bytes a character
                "command": ["z" * 4000] * 4,
            },
            "env_vars",
        ),
    ],
)
def test_fields_within_their_limits_but_over_one_message_are_a_400_naming_the_largest(
    api, fields, named
):
    error = assert_400(api.post(BASE, _size_body(**fields)), named)
    assert str(DEPLOY_CONTENT_BUDGET_BYTES) in error["message"]
    assert "x" * 100 not in json.dumps(error)  # values never echoed
    assert api.get(BASE).data["items"] == []


def test_a_deployment_at_the_content_budget_fits_one_message_and_one_item(api, monkeypatch):
    """The largest content accepted, with every other field as large as it may grow: the
    deploy_model still fits 128 KB and the item 400 KB (moto refuses a larger item)."""
    from app import app
    from chalicelib.services import registry
    from chalicelib.store.deployments import DeploymentRepository
    from tests.functional.node_sim import NodeSim

    class Recording:
        posted: list = []

        def post_to_connection(self, ConnectionId, Data):  # noqa: N803
            self.posted.append(Data)

    recording = Recording()
    monkeypatch.setattr(registry.placement()._channel, "_client_factory", lambda: recording)
    node = api.post(NODES, {"name": "box"}).data
    sim = NodeSim(app, node["token"], node["id"])
    sim.connect()
    sim.hello()
    patterns = ["p" * 256] * 64
    fixed = _size_body(
        weights_source="/srv/" + "w" * 4000,
        deploy_config={
            "weights_allow_patterns": patterns,
            "weights_ignore_patterns": patterns,
            "health_path": "/" + "h" * 511,
        },
        gpu_type="A" * 64,
    )
    used = sum(
        len(json.dumps(v, ensure_ascii=False).encode())
        for v in (fixed["weights_source"], fixed["deploy_config"])
    )
    room = DEPLOY_CONTENT_BUDGET_BYTES - used - len(json.dumps([]))
    env = {f"E{n:03d}": "v" * 30_000 for n in range(room // 30_020)}
    left = room - len(json.dumps(env, ensure_ascii=False).encode()) - 1024  # the defaults
    env["LAST"] = "v" * left
    body = fixed | {"env_vars": env, "gpu": False, "gpu_type": None, "command": []}
    created = api.post(BASE, body)
    assert created.status_code == 201, created.body
    deployment_id = json.loads(created.body)["id"]
    [deploy] = [m for m in recording.posted if b'"deploy_model"' in m]
    assert len(deploy) <= MAX_MESSAGE_BYTES - 16 * 1024  # room for what the message adds later
    # The node reports everything a deployment can carry, each at its limit.
    big_url = "http://n:1/" + "u" * (MAX_MESSAGE_BYTES - 1024)
    sim.say(type="deployment_progress", deployment_id=deployment_id, status="pulling")
    sim.say(type="deployment_ready", deployment_id=deployment_id, endpoint_url=big_url)
    sim.say(
        type="deployment_restarted",
        deployment_id=deployment_id,
        restarts=1,
        cause="crash",
        message="m" * 9000,
    )
    sim.say(type="deployment_ready", deployment_id=deployment_id, endpoint_url=big_url)
    sim.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason="crash",
        message="c" * 9000,
    )
    item = DeploymentRepository().get(deployment_id)
    assert item.status == "failed" and item.failure_reason == "crash"
    assert item.endpoint_url == big_url


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": "model\n"}, "name"),
        ({"image": "nginx\n"}, "image"),
        ({"image": "ghcr.io/a/b:1.2\n"}, "image"),
        ({"resource_slug": "tiny-regressor\n", "image": None}, "resource_slug"),
        ({"gpu_type": "A100\n"}, "gpu_type"),
        ({"node_id": "node_0123456789abcdef\n"}, "node_id"),
        ({"env_vars": {"TOKEN\n": "x"}}, "env_vars.TOKEN\n.[key]"),
        ({"weights_source": "hf://org/model\n", "image": None}, "weights_source"),
        ({"weights_source": "hf://org/model\n@main", "image": None}, "weights_source"),
        ({"weights_source": "hf://org/model@main\n", "image": None}, "weights_source"),
        ({"weights_source": "r2://bucket\n/key", "image": None}, "weights_source"),
        ({"weights_source": "https://h.example/w.bin\n", "image": None}, "weights_source"),
        ({"weights_source": "https://h.example/w\n.bin", "image": None}, "weights_source"),
        ({"weights_source": "/srv/models/m\n", "image": None}, "weights_source"),
        ({"deploy_config": {"health_path": "/health\n"}}, "deploy_config.health_path"),
    ],
)
def test_a_trailing_newline_is_never_accepted(api, fields, named):
    body = {"name": "m", "image": "nginx"} | fields
    assert_400(api.post(BASE, {k: v for k, v in body.items() if v is not None}), named)


def test_a_trailing_newline_is_refused_in_node_names_and_protocol_ids(api):
    from app import app
    from chalicelib.services import registry
    from tests.functional.node_sim import NodeSim

    assert_400(api.post(NODES, {"name": "box\n"}), "name")
    node = api.post(NODES, {"name": "box"}).data
    sim = NodeSim(app, node["token"], node["id"])
    sim.connect()
    handler = registry.node_message_handler()
    frame = {"type": "deployment_progress", "id": "p", "deployment_id": "dep_0123456789abcdef\n"}
    [reply] = handler.handle(sim.connection_id, json.dumps(frame | {"status": "pulling"}))
    assert (reply.type, reply.code) == ("error", "malformed")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "stop_deployment", "deployment_id": "dep_0123456789abcdef\n"},
        {"type": "endpoint_keys", "deployment_id": "dep_0123456789abcdef"}
        | {"key_hashes": ["a" * 64 + "\n"]},
        {"type": "deploy_model", "deployment_id": "dep_0123456789abcdef\n"}
        | {"deploy_config": {"health_path": "/h"}},
    ],
)
def test_protocol_ids_and_hashes_are_matched_to_their_very_end(message):
    from chalicelib.protocol import ProtocolError, parse_server_message

    with pytest.raises(ProtocolError):
        parse_server_message(json.dumps(message | {"id": "m"}))
    fixed = json.loads(json.dumps(message).replace("\\n", ""))
    assert parse_server_message(json.dumps(fixed | {"id": "m"})).type == message["type"]


@pytest.mark.parametrize(
    "path",
    [
        "health",
        "/a/../b",
        "/..",
        "/a/./b",
        "/%2e%2e/etc",
        "/a\\b",
        "/a?x=1",
        "/a#x",
        "/a b",
        "/a\tb",
        "/a\x00",
        "/a\x7f",
        "/a%00b",
        "/a%5cb",
        "//evil.example/x",
        "/é",
    ],
)
def test_health_path_is_a_plain_rfc3986_path(api, path):
    body = {"name": "m", "image": "nginx", "deploy_config": {"health_path": path}}
    assert_400(api.post(BASE, body), "deploy_config.health_path")


@pytest.mark.parametrize("path", ["/", "/health", "/v1/models:ready", "/a-b_c.d~e/%20x", "/@x"])
def test_plain_health_paths_are_accepted(api, path):
    body = {"name": "m", "image": "nginx", "deploy_config": {"health_path": path}}
    response = api.post(BASE, body)
    assert response.status_code == 201, response.body
    assert json.loads(response.body)["deploy_config"]["health_path"] == path


@pytest.mark.parametrize("field", ["gpu", "allow_insecure_http"])
@pytest.mark.parametrize("value", ["yes", "true", "1", 1, 0, "on", None])
def test_booleans_are_strict(api, field, value):
    body = {"name": "m", "weights_source": "/srv/m", field: value}
    assert_400(api.post(BASE, body), field)


def _list_token(api, **query):
    for n in range(3):
        assert api.post(BASE, {"name": f"m{n}", "image": "nginx"}).status_code == 201
    suffix = "".join(f"&{k}={v}" for k, v in query.items())
    token = json.loads(api.get(f"{BASE}?limit=1{suffix}").body)["next_token"]
    assert token
    return token


def _reencode(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decoded(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def test_another_owners_next_token_is_a_400(api, other_api):
    token = _list_token(other_api)
    assert_400(api.get(f"{BASE}?limit=1&next_token={token}"), "next_token")
    assert other_api.get(f"{BASE}?limit=1&next_token={token}").status_code == 200


def test_a_next_token_of_another_query_is_a_400(api):
    token = _list_token(api, status="provisioning")
    assert_400(api.get(f"{BASE}?limit=1&next_token={token}"), "next_token")
    assert_400(api.get(f"{BASE}?limit=1&status=running&next_token={token}"), "next_token")
    mine = json.loads(api.get(f"{BASE}?limit=1").body)["items"][0]["id"]
    assert_400(api.get(f"{BASE}/{mine}/costs?next_token={token}"), "next_token")


def test_a_tampered_next_token_is_a_400(api, users):
    token = _list_token(api)
    data = _decoded(token)
    [position] = data["p"].values()
    moved = dict(data, p={"": [position[0], "dep_ffffffffffffffff"]})
    for tampered in (
        _reencode(moved),  # positions edited, digest kept
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        _reencode({k: v for k, v in data.items() if k != "d"}),  # no digest
    ):
        assert_400(api.get(f"{BASE}?limit=1&next_token={tampered}"), "next_token")
    # Even a correctly sealed token is checked: a position DynamoDB would refuse is a 400.
    owner = users.owner_of_key(api.key)
    for bad in ([position[0], ""], ["", position[1]], ["yesterday", position[1]], [1, 2]):
        forged = {"f": data["f"], "p": {"": bad}}
        forged["d"] = _digest(owner, forged)
        assert_400(api.get(f"{BASE}?limit=1&next_token={_reencode(forged)}"), "next_token")


@pytest.mark.parametrize(
    "token",
    ["x", "garbage!!", "%%%", "AAAA", "e30", "bnVsbA", "W10", "eyJmIjoxfQ", "a" * 4096],
)
def test_a_garbage_next_token_is_a_400(api, token):
    assert_400(api.get(f"{BASE}?next_token={token}"), "next_token")


# --- what the gateway answers itself (prism/dev/api_server.py, as API Gateway) -------------

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "resources.json"


@contextmanager
def local_gateway():
    """The local API Gateway (chalice local's server with our handler) in front of this
    process's app, with the gateway responses the template configures."""
    from chalice.config import Config
    from chalice.local import LocalDevServer

    from app import app
    from prism.dev.api_server import GatewayRequestHandler, GatewayResponses

    definition = json.loads(TEMPLATE.read_text())["Resources"]["RestAPI"]["Properties"]
    responses = definition["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]

    class InProcessRoutes:
        routes = app.routes
        api = app.api

        def __init__(self):
            self.responses = GatewayResponses(responses)

        def __call__(self, event, context):
            return app(event, context)

    config = Config(chalice_stage="dev", config_from_disk={"app_name": "prism"})
    server = LocalDevServer(
        InProcessRoutes(), config, "127.0.0.1", 0, handler_cls=GatewayRequestHandler
    )
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.shutdown()
        server.server.server_close()


def assert_our_shape(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/api/v1/compute/deployments/dep_0123456789abcdef/nope"),
        ("POST", "/api/v1/openapi.json"),
        ("PUT", BASE),
        ("PATCH", BASE),
        ("TRACE", BASE),
        ("TRACE", "/"),
        ("OPTIONS", BASE),
        ("BREW", BASE),
    ],
)
def test_the_local_gateway_answers_unknown_routes_and_methods_in_our_shape(api, method, path):
    with local_gateway() as url:
        headers = {"Authorization": f"Bearer {api.key}"}
        error = assert_our_shape(requests.request(method, url + path, headers=headers), 404)
        assert error["code"] == "not_found"
        assert_our_shape(requests.request(method, url + path), 404)  # with no key, the same


def test_head_is_answered_without_a_body_and_the_connection_stays_usable(api):
    with local_gateway() as url, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {api.key}"
        for _ in range(2):  # a body after HEAD would be read as the next answer
            head = session.head(url + BASE)
            assert head.status_code == 404 and head.content == b""
            assert head.headers["Content-Type"] == "application/json"
            assert session.get(url + BASE).status_code == 200


def test_the_local_gateway_serves_the_app_and_its_errors_in_our_shape(api):
    with local_gateway() as url:
        assert requests.get(url + BASE, headers={"Authorization": f"Bearer {api.key}"}).ok
        assert_our_shape(requests.get(url + BASE), 401)
        deep = "[" * DEEP + "]" * DEEP
        headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
        assert_our_shape(requests.post(url + BASE, data=deep, headers=headers), 400)


def test_a_malformed_request_gets_the_gateways_4xx_in_our_shape():
    import socket

    with local_gateway() as url:
        host, port = url.removeprefix("http://").split(":")
        for request in (
            f"GET {BASE} HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            "NOT A REQUEST LINE AT ALL\r\n\r\n",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(request.encode())
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], head
            assert json.loads(body)["error"]["code"] == "request_rejected"


def test_a_failed_integration_is_answered_in_our_shape():
    from prism.dev.api_server import GatewayResponses

    responses = json.loads(TEMPLATE.read_text())["Resources"]["RestAPI"]["Properties"]
    gateway = GatewayResponses(responses["DefinitionBody"]["x-amazon-apigateway-gateway-responses"])
    for kind, status in (("INTEGRATION_FAILURE", 502), ("INTEGRATION_TIMEOUT", 504)):
        answer = gateway.answer(kind)
        assert answer["statusCode"] == status
        assert json.loads(answer["body"])["error"]["code"] == "internal"
    # Without customisation, API Gateway's own defaults.
    bare = GatewayResponses({}).answer("MISSING_AUTHENTICATION_TOKEN")
    assert (bare["statusCode"], json.loads(bare["body"])) == (
        403,
        {"message": "Missing Authentication Token"},
    )


# --- the control plane's own health probes ----------------------------------------------


def test_the_health_probe_never_follows_a_redirect():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from chalicelib.health_probe import probe

    followed = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/elsewhere":
                followed.append(self.path)
            self.send_response(302 if self.path == "/health" else 500)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # A 302 answers (below 400: healthy, as Kubernetes reads it); it is never followed,
        # so its target (here failing) is never asked.
        assert probe(f"http://127.0.0.1:{server.server_address[1]}/health").healthy
        assert followed == []
    finally:
        server.shutdown()
        server.server_close()
