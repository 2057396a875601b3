"""The whole local platform as real processes: `prism dev up` (moto server + chalice local),
driven by the real `prism` CLI over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests

from prism.dev.platform import STAGE
from prism.dev.processes import free_port
from prism.dev.stack import build

REPO = Path(__file__).resolve().parents[2]
PRISM = [sys.executable, "-m", "prism"]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Platform:
    process: subprocess.Popen
    api_port: int
    aws_port: int
    env: dict
    ws_port: int = 0
    management_port: int = 0
    state_dir: Path | None = None
    api_url: str = ""
    api_key: str = ""
    ws_url: str = ""
    output: list = field(default_factory=list)

    def register_node(self, name: str, key: str | None = None) -> dict:
        """A node registered through the REST API: its id and its token."""
        return requests.post(
            f"{self.api_url}/api/v1/compute/nodes",
            json={"name": name},
            headers={"Authorization": f"Bearer {key or self.api_key}"},
            timeout=10,
        ).json()

    def aws(self, service: str, identity: str):
        """A boto3 client signed as one of the platform's identities (a function's logical id,
        "operator"): the state dir keeps their keys."""
        keys = json.loads((self.state_dir / "identities.json").read_text())[identity]
        endpoint = f"http://127.0.0.1:{self.aws_port}"
        if service == "apigatewaymanagementapi":
            endpoint = f"http://127.0.0.1:{self.management_port}/api"
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["access_key"],
            aws_secret_access_key=keys["secret_key"],
        )

    def cli(self, *args, key: str | None = None, check: bool = False):
        env = self.env | ({"PRISM_API_KEY": key} if key else {})
        result = subprocess.run(
            [*PRISM, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        if check:
            assert result.returncode == 0, result.stderr + result.stdout
        return result


def start_platform(
    tmp_path: Path,
    tick: float = 60,
    extra_env: dict | None = None,
    args: tuple[str, ...] = ("--no-node",),
    ready_line: str = "# ready",
) -> Platform:
    api_port, aws_port, ws_port, management_port = (free_port() for _ in range(4))
    env = os.environ | {"PRISM_CONFIG": str(tmp_path / "config.json"), "COLUMNS": "200"}
    env |= extra_env or {}
    for name in ("PRISM_API_URL", "PRISM_API_KEY", "PRISM_AWS_ENDPOINT_URL"):
        env.pop(name, None)
    if "--state-dir" not in args:  # each platform its own state, never the checkout's .prism
        args = (*args, "--state-dir", str(tmp_path / "state"))
    process = subprocess.Popen(
        [
            *PRISM,
            "dev",
            "up",
            "--api-port",
            str(api_port),
            "--aws-port",
            str(aws_port),
            "--ws-port",
            str(ws_port),
            "--management-port",
            str(management_port),
            "--tick",
            str(tick),
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    STARTED.append(process)
    platform = Platform(process, api_port, aws_port, env, ws_port, management_port)
    platform.state_dir = Path(args[args.index("--state-dir") + 1])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            output = "".join(platform.output)
            raise AssertionError(f"prism dev up exited with {process.returncode}:\n{output}")
        if line.startswith("PRISM_API_URL="):
            platform.api_url = line.split("=", 1)[1].strip()
        if line.startswith("PRISM_API_KEY="):
            platform.api_key = line.split("=", 1)[1].strip()
        if line.startswith("PRISM_WS_URL="):
            platform.ws_url = line.split("=", 1)[1].strip()
        platform.output.append(line)
        if line.startswith(ready_line):
            return platform
    raise AssertionError("prism dev up did not print its API key in time")


STARTED: list[subprocess.Popen] = []  # every `prism dev up` of this session


@pytest.fixture(scope="session", autouse=True)
def no_platform_outlives_the_session():
    """A test that failed half-way may leave its platform up: stop it, so it neither burns the
    CPU of the tests after it nor keeps its processes past the run."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in STARTED:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by `pid` (each found by its parent)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_platform(platform: Platform) -> int:
    platform.process.send_signal(signal.SIGINT)
    return platform.process.wait(timeout=30)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    started = start_platform(tmp_path_factory.mktemp("platform"))
    yield started
    if started.process.poll() is None:
        stop_platform(started)


def packaged_functions() -> int:
    """The Lambda functions of the package the platform runs (built once, then cached)."""
    template = json.loads((build(STAGE) / "sam.json").read_text())
    return sum(r["Type"] == "AWS::Serverless::Function" for r in template["Resources"].values())
