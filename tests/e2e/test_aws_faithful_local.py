"""The local platform is as strict as AWS: each function runs from the Lambda package alone with
its own template environment and role; the local AWS refuses unsigned, wrongly signed and
ungranted calls; the WebSocket management API answers only roles that may manage connections."""

import json
import time
from pathlib import Path

import boto3
import pytest
import requests
import websocket
from botocore.exceptions import ClientError

from prism.dev.stack import LocalAws, Stack
from tests.e2e.conftest import descendants, packaged_functions, start_platform, stop_platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    started = start_platform(tmp_path_factory.mktemp("faithful"))
    yield started
    stop_platform(started)


def _keys(platform, identity: str) -> dict:
    return json.loads((platform.state_dir / "identities.json").read_text())[identity]


def _containers(platform) -> dict[str, list[str]]:
    """The function containers the Lambda service runs: handler -> argv."""
    found = {}
    for pid in descendants(platform.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if any(arg.endswith("lambda_worker.py") for arg in argv):
            found[argv[argv.index("-S") + 3]] = argv
    return found


def _environ(pid_argv_handler: str, platform) -> dict[str, str]:
    for pid in descendants(platform.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            if pid_argv_handler in argv and any(a.endswith("lambda_worker.py") for a in argv):
                raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                return dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        except OSError:
            continue
    raise AssertionError(f"no container runs {pid_argv_handler}")


def test_every_function_runs_isolated_from_the_package_with_its_template_environment(platform):
    functions = packaged_functions()  # each in a container of its own
    deadline = time.monotonic() + 60
    while len(_containers(platform)) < functions and time.monotonic() < deadline:
        time.sleep(0.5)
    containers = _containers(platform)
    assert len(containers) == functions
    runtime = next(iter(containers.values()))[4]
    assert all(argv[1:3] == ["-I", "-S"] for argv in containers.values())  # no site-packages
    management = f"http://127.0.0.1:{platform.management_port}/api"
    stack = Stack(
        Path(runtime).parent, LocalAws("dev", platform.api_url, platform.ws_url, management)
    )
    specs = {spec.handler: spec for spec in stack.functions().values()}
    for handler in ("app.cloud_poll", "app.cloud_check_health", "app.meter_tick", "app.app"):
        environ = _environ(handler, platform)
        spec = specs[handler]
        prism = {k: v for k, v in environ.items() if k.startswith(("PRISM_", "POWERTOOLS_"))}
        template = {k: v for k, v in spec.environment.items()}
        local = {"PRISM_AWS_ENDPOINT_URL"} | {k for k in prism if k.endswith("_SECONDS")}
        assert set(prism) - set(template) <= local, handler  # nothing the template lacks
        for name, value in template.items():
            assert environ[name] == value
        own = _keys(platform, spec.logical_id)
        assert environ["AWS_ACCESS_KEY_ID"] == own["access_key"]  # its own role's key
    # The cloud health step may place a deployment on a node: its template says where nodes are;
    # the poll step's does not, and locally it does not see it either.
    assert "PRISM_WS_MANAGEMENT_URL" in _environ("app.cloud_check_health", platform)
    assert "PRISM_WS_MANAGEMENT_URL" not in _environ("app.cloud_poll", platform)


def test_the_local_aws_refuses_unsigned_wrongly_signed_and_ungranted_calls(platform):
    unsigned = requests.post(
        f"http://127.0.0.1:{platform.aws_port}/",
        headers={"X-Amz-Target": "DynamoDB_20120810.Scan"},
        data=json.dumps({"TableName": "prism-dev-users"}),
        timeout=10,
    )
    assert unsigned.status_code == 403
    stranger = boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{platform.aws_port}",
        region_name="us-east-1",
        aws_access_key_id="AKIANOBODY",
        aws_secret_access_key="guessed",
    )
    with pytest.raises(ClientError, match="InvalidClientTokenId"):
        stranger.scan(TableName="prism-dev-users")
    tick = platform.aws("ssm", "MeterTick")  # a function's role: only what it is granted
    with pytest.raises(ClientError, match="AccessDenied|not authorized"):
        tick.get_parameter(Name="/other-app/secret")
    with pytest.raises(ClientError, match="AccessDenied|not authorized"):
        platform.aws("dynamodb", "MeterTick").scan(TableName="someone-elses-table")
    granted = platform.aws("dynamodb", "MeterTick").scan(TableName="prism-dev-users")
    assert granted["Count"] >= 1  # the dev user
    assert requests.post(f"http://127.0.0.1:{platform.aws_port}/moto-api/reset").status_code == 403
    cors = requests.options(
        f"http://127.0.0.1:{platform.aws_port}/",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in cors.headers


def test_the_management_api_answers_only_roles_that_may_manage_connections(platform):
    registered = platform.register_node("probe")
    node = websocket.create_connection(
        platform.ws_url, header=[f"Authorization: Bearer {registered['token']}"], timeout=5
    )
    try:
        scan = platform.aws("dynamodb", "operator").scan(TableName="prism-dev-connections")
        (connection_id,) = [item["connection_id"]["S"] for item in scan["Items"]]
        url = f"http://127.0.0.1:{platform.management_port}/api/@connections/{connection_id}"
        command = json.dumps({"type": "deploy_model", "command": ["sh", "-c", "id"]})
        assert requests.post(url, data=command, timeout=5).status_code == 403
        poll = platform.aws("apigatewaymanagementapi", "CloudPoll")
        with pytest.raises(ClientError, match="403|Forbidden"):
            poll.post_to_connection(ConnectionId=connection_id, Data=command.encode())
        node.settimeout(1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            node.recv()  # nothing reached the node
        sender = platform.aws("apigatewaymanagementapi", "WebsocketMessage")
        with pytest.raises(ClientError, match="403|Forbidden"):  # granted POST, not DELETE
            sender.delete_connection(ConnectionId=connection_id)
        sender.post_to_connection(ConnectionId=connection_id, Data=b'{"type": "ping"}')
        assert json.loads(node.recv()) == {"type": "ping"}
    finally:
        node.close()


def test_an_invocation_has_no_delayed_ack_stall(platform):
    """Each answer from the local Lambda service once waited for the caller's delayed ACK
    (~40 ms, Nagle's algorithm on a kept-alive socket): a request that reaches the API function
    and is refused there for its key takes a few ms, as on Lambda."""
    url = f"{platform.api_url}/api/v1/compute/deployments"
    with requests.Session() as session:
        timings = []
        for _ in range(21):
            started = time.perf_counter()
            refused = session.get(url, headers={"Authorization": "Bearer prism_nope"}, timeout=10)
            timings.append(time.perf_counter() - started)
            assert refused.status_code == 401
    assert sorted(timings)[10] < 0.025, timings
