"""The local platform, as child processes that die with us (own process group, parent-death
signal): the packaged stack's functions in the local Lambda service, a moto server as AWS, the
REST API (chalice local's gateway) and the WebSocket gateway (with the schedules and the SQS
event source) invoking them."""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from prism.dev import identities, stack
from prism.dev.awsenv import local_aws_env
from prism.dev.fakes.__main__ import local_env as fake_cloud_env
from prism.dev.infra import REPO_ROOT
from prism.dev.lambda_client import INVOKE_TOKEN
from prism.dev.local_state import LocalState
from prism.dev.node_supervisor import NodeSupervisor
from prism.dev.processes import die_with_parent, free_port

STAGE = "dev"


class PlatformError(Exception):
    """The platform could not start; the message says what to do."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class LocalPlatform:
    host: str = "127.0.0.1"
    api_port: int = 8000
    moto_port: int = 4566
    ws_port: int = 8001
    management_port: int = 8002
    tick_seconds: float = 60.0
    fake_clouds: bool = False  # fake RunPod + Lambda Cloud, so cloud targets work offline
    runpod_port: int = 8003
    lambda_port: int = 8004
    fake_price_per_hour: float | None = None  # every fake GPU at this price (budget demos)
    fake_hub: bool = False  # a fake Hugging Face Hub (prism.dev.fakes: its repos)
    hub_port: int = 8005
    state: LocalState = field(default_factory=lambda: LocalState(REPO_ROOT / ".prism"))
    fresh: bool = False  # start empty: forget the state dir's users, nodes and deployments
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    functions_port: int = field(default_factory=free_port)  # the local Lambda service
    # Shown by the platform's own stand-ins (API Gateway, EventBridge, Step Functions) on every
    # invocation: nothing else on this machine may invoke a function.
    invoke_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    node: NodeSupervisor | None = None

    @property
    def log_dir(self) -> Path:
        return self.state.logs

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def aws_url(self) -> str:
        return f"http://{self.host}:{self.moto_port}"

    @property
    def hub_url(self) -> str:
        return f"http://{self.host}:{self.hub_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}/api"

    @property
    def functions_url(self) -> str:
        return f"http://127.0.0.1:{self.functions_port}"

    def operator_keys(self) -> tuple[str, str]:
        """The operator identity (an administrator of the local AWS): bootstrap, `prism admin`."""
        operator = identities.load(self.state.identities)[identities.OPERATOR]
        return operator.access_key, operator.secret_key

    def env(self) -> dict[str, str]:
        """What every child starts with. Its AWS keys are placeholders the local AWS refuses
        (and never a real account's): each process that calls AWS gets its own identity."""
        return (
            os.environ
            | local_aws_env(self.aws_url, STAGE)
            | {
                "PYTHONUNBUFFERED": "1",
                # The local ticker's period is the metering interval the worker plans with.
                "PRISM_METERING_INTERVAL_SECONDS": str(max(1, round(self.tick_seconds))),
                # Step Functions' waits between provider polls (seconds, as the ticker's).
                "PRISM_CLOUD_POLL_SECONDS": str(max(1, min(10, round(self.tick_seconds)))),
                "PRISM_CLOUD_TERMINATE_RETRY_SECONDS": str(
                    max(1, min(30, round(self.tick_seconds)))
                ),
            }
            | self._fakes_env()
        )

    def _fakes_env(self) -> dict[str, str]:
        env = {}
        if self.fake_clouds:
            env |= fake_cloud_env(self.host, self.runpod_port, self.lambda_port)
        if self.fake_hub:
            env["HF_ENDPOINT"] = self.hub_url  # the node agent pulls hf:// from it
        return env

    def start(self) -> dict:
        """Start everything; returns the dev user's {"user_id", "api_key"} (the last run's,
        when the state dir has it)."""
        self._check_ports()
        self.state.prepare(self.fresh)
        if self.fake_clouds or self.fake_hub:
            self._start_fakes()
        package = self._start_functions()
        self._spawn(
            "moto",
            [sys.executable, "-m", "prism.dev.moto_server", "-H", self.host]
            + ["-p", str(self.moto_port)],
            extra_env={
                "PRISM_MOTO_STATE_DIR": str(self.state.aws),
                "PRISM_LOCAL_IDENTITIES": str(self.state.identities),
                "INITIAL_NO_AUTH_ACTION_COUNT": "0",  # IAM enforced from the first request
                "MOTO_DISABLE_GLOBAL_CORS": "1",  # no web page may call the local AWS
                "PRISM_LOCAL_FUNCTIONS_URL": self.functions_url,  # Step Functions' Lambda
                INVOKE_TOKEN: self.invoke_token,
            },
        )
        self._wait_http("moto", f"{self.aws_url}/moto-api/")
        user = self._bootstrap()
        self.state.save_user(user)
        stack_args = [
            *("--functions-url", self.functions_url, "--package", str(package)),
            *("--stage", STAGE, "--host", self.host),
        ]
        # The REST API is served by the Lambda service's process (prism.dev.api_server).
        self._wait_http("lambda", f"{self.api_url}/api/v1/openapi.json")
        self._spawn(
            "gateway",
            [sys.executable, "-m", "prism.dev.ws_gateway", "--port", str(self.ws_port)]
            + ["--management-port", str(self.management_port), "--tick", str(self.tick_seconds)]
            + ["--identities", str(self.state.identities), *stack_args],
            extra_env={INVOKE_TOKEN: self.invoke_token},
        )
        self._wait_http("gateway", f"http://{self.host}:{self.management_port}/")
        self._wait_port("gateway", self.ws_port)
        return user

    def _check_ports(self) -> None:
        ports = {
            "api": self.api_port,
            "aws": self.moto_port,
            "ws": self.ws_port,
            "management": self.management_port,
        }
        if self.fake_clouds:
            ports |= {"runpod": self.runpod_port, "lambda": self.lambda_port}
        if self.fake_hub:
            ports |= {"hub": self.hub_port}
        for option, port in ports.items():
            if not port_is_free(self.host, port):
                raise PlatformError(
                    f"port {port} (--{option}-port) is already in use; stop what holds it "
                    f"or choose another with --{option}-port"
                )

    def _start_functions(self) -> Path:
        """The Lambda package (built when what it is made of changed), each function's
        identity, and the local Lambda service that runs the functions."""
        try:
            package = stack.build(STAGE)
        except RuntimeError as exc:
            raise PlatformError(str(exc)) from None
        local = stack.LocalAws(STAGE, self.api_url, self.ws_url, self.management_url)
        identities.prepare(stack.Stack(package, local), self.state.identities)
        self._spawn(
            "lambda",
            [sys.executable, "-m", "prism.dev.lambda_service", "--port", str(self.functions_port)]
            + ["--rest-port", str(self.api_port), "--host", self.host]
            + ["--package", str(package), "--stage", STAGE]
            + ["--log-dir", str(self.log_dir / "functions"), "--api-url", self.api_url]
            + ["--ws-url", self.ws_url, "--management-url", self.management_url]
            + ["--identities", str(self.state.identities)],
            extra_env={INVOKE_TOKEN: self.invoke_token},
        )
        self._wait_http("lambda", self.functions_url)
        return package

    def _start_fakes(self) -> None:
        argv = [sys.executable, "-m", "prism.dev.fakes"]
        if self.fake_clouds:
            argv += ["--runpod-port", str(self.runpod_port), "--lambda-port", str(self.lambda_port)]
            if self.fake_price_per_hour:
                argv += ["--price-per-hour", str(self.fake_price_per_hour)]
        if self.fake_hub:
            argv += ["--hub-port", str(self.hub_port)]
        self._spawn("fakes", argv)
        self._wait_port("fakes", self.hub_port if self.fake_hub else self.lambda_port)

    def _spawn(self, name: str, argv: list[str], extra_env: dict | None = None) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.processes[name] = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=self.env() | (extra_env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _wait_http(self, name: str, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise PlatformError(
                    f"{name} exited with code {process.returncode} while starting; "
                    f"see {self.log_dir / (name + '.log')}"
                )
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise PlatformError(f"{name} did not answer at {url} within {timeout:.0f}s")

    def _wait_port(self, name: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.host, port)) == 0:
                    return
            if self.processes[name].poll() is not None:
                raise PlatformError(f"{name} exited while starting; see {self.log_dir}")
            time.sleep(0.05)
        raise PlatformError(f"{name} did not listen on port {port} within {timeout:.0f}s")

    def _bootstrap(self) -> dict:
        saved = self.state.saved_user()
        result = subprocess.run(
            [sys.executable, "-m", "prism.dev.bootstrap", "dev"],
            cwd=REPO_ROOT,
            env=self.env()
            | local_aws_env(self.aws_url, STAGE, *self.operator_keys())
            | ({"PRISM_DEV_API_KEY": saved["api_key"]} if saved else {}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise PlatformError(f"could not prepare the local AWS: {result.stderr.strip()}")
        user = json.loads(result.stdout.strip().splitlines()[-1])
        if user != saved:  # the local AWS started empty: a node token kept from before is dead
            self.state.forget_node()
        return user

    def start_node(self, api_key: str, env: dict[str, str], say=print) -> None:
        """A node agent on this machine, supervised: registered the first time, after that it
        comes back with its token and re-adopts the models it runs."""
        argv = [sys.executable, "-m", "prism", "node", "up", "--state-dir", str(self.state.node)]
        argv += ["--name", "local", "--api", self.api_url, "--ws", self.ws_url]
        argv += ["--local-api-port", "0", "--probe-interval", "2", "--heartbeat", "5"]

        def spawn() -> subprocess.Popen:
            self._spawn("node", argv, extra_env=env | {"PRISM_API_KEY": api_key})
            return self.processes["node"]

        started = datetime.now(UTC)
        self.node = NodeSupervisor(spawn, say)
        headers = {"Authorization": f"Bearer {api_key}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.processes["node"].poll() is not None:
                raise PlatformError(f"the node agent exited; see {self.log_dir / 'node.log'}")
            nodes = requests.get(
                f"{self.api_url}/api/v1/compute/nodes", headers=headers, timeout=5
            ).json()["items"]
            # Online since this start: a node kept from the last run may still say online.
            if any(_online_since(node, started) for node in nodes):
                return
            time.sleep(0.2)
        raise PlatformError("the local node agent did not come online within 60 s")

    def supervise(self) -> None:
        """Call often: a dead node agent is restarted; any other process dying is an error."""
        if self.node is not None:
            self.node.check()
        for name, process in self.processes.items():
            if name != "node" and process.poll() is not None:
                raise PlatformError(
                    f"{name} exited unexpectedly (code {process.returncode}); "
                    f"see {self.log_dir / (name + '.log')}"
                )

    def stop(self, grace: float = 10.0) -> None:
        """The node agent first, with its models, while the API still hears its reports; then
        SIGTERM every process group, and SIGKILL what is left after `grace` seconds."""
        node = self.processes.pop("node", None)
        if node is not None:
            (self.state.node / "stop-all").touch()
            _signal_group(node, signal.SIGTERM)
            try:
                node.wait(timeout=grace + 20)
            except subprocess.TimeoutExpired:
                _signal_group(node, signal.SIGKILL)
                node.wait()
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        self.processes.clear()


def _online_since(node: dict, started: datetime) -> bool:
    seen = datetime.fromisoformat(node["last_seen_at"].replace("Z", "+00:00"))
    return node["status"] == "online" and seen >= started


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
