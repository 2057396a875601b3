"""What a fake cloud instance runs when it is one of our nodes: the real node agent, as a
subprocess, on a sandbox directory standing for the instance's disk.

- A RunPod pod whose image is the node agent image runs `prism node up` with the pod's env,
  as the image's entrypoint would (infra/node-agent/Dockerfile).
- A Lambda VM runs its cloud-init user data with bash, with PRISM_ROOT at its sandbox and a
  `docker` on PATH (prism/dev/fakes/vm_docker.py) that starts the node agent image as a process
  and ignores every other image (image deployments answer through the fake's canned endpoint).

Terminating an instance stops its agent and every model it runs (`prism node down
--stop-all`), then kills what is left. What the agent prints goes to
<sandbox>/var/lib/prism/agent.out.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[3]
STATE_DIR = "/var/lib/prism"  # as in chalicelib/services/node_bootstrap.py


def agent_image() -> str:
    """The image the fakes treat as our node agent (the control plane's setting)."""
    # Imported late: chalicelib.config reads its settings once, at import (`prism admin`
    # prepares the environment first).
    from chalicelib.config import DEFAULT_NODE_AGENT_IMAGE

    return os.environ.get("PRISM_NODE_AGENT_IMAGE") or DEFAULT_NODE_AGENT_IMAGE


def instance_env(extra: dict[str, str]) -> dict[str, str]:
    """A fresh machine's environment: none of the control plane's settings or AWS keys (the
    fakes' process has them); HF_ENDPOINT stays, standing in for the internet's hub."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PRISM_", "AWS_", "RUNPOD_", "LAMBDA_"))
    }
    return base | {"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"} | extra


def spawn_agent(env: dict[str, str], state_dir: Path) -> subprocess.Popen:
    """`prism node up` as the agent image's entrypoint runs it, detached like a container; what
    it prints goes to <state_dir>/agent.out."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "agent.out", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prism", "node", "up", "--no-local-api"],
            cwd=REPO_ROOT,
            env=instance_env(env | {"PRISM_NODE_STATE": str(state_dir)}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class InstanceHost:
    """The machines behind one fake provider's instances."""

    def __init__(self, root: Path | None = None):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="prism-fake-instances-"))
        self._lock = threading.Lock()
        self._booted: set[str] = set()

    def sandbox(self, instance_id: str) -> Path:
        return self.root / instance_id

    def agent_state(self, instance_id: str) -> Path:
        return self.sandbox(instance_id) / STATE_DIR.lstrip("/")

    def boot_container(self, instance_id: str, image: str, env: dict[str, str]) -> None:
        """A pod: its image is the machine. Only the agent image runs something here."""
        if image != agent_image() or not self._first_boot(instance_id):
            return
        spawn_agent(env, self.agent_state(instance_id))

    def boot_vm(self, instance_id: str, user_data: str | None) -> None:
        """A VM: cloud-init runs its user data once, as root, at first boot."""
        if not user_data or not self._first_boot(instance_id):
            return
        sandbox = self.sandbox(instance_id)
        script = sandbox / "user-data"
        script.write_text(user_data)
        shim = sandbox / "bin"
        shim.mkdir()
        docker = shim / "docker"
        docker.write_text(f'#!/bin/sh\nexec {sys.executable} -m prism.dev.fakes.vm_docker "$@"\n')
        docker.chmod(0o755)
        with open(sandbox / "cloud-init.log", "ab") as log:
            subprocess.Popen(
                ["bash", str(script)],
                cwd=sandbox,
                env=instance_env(
                    {
                        "PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                        "PRISM_ROOT": str(sandbox),
                    }
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def runs_agent(self, instance_id: str) -> bool:
        return (self.agent_state(instance_id) / "agent.pid").exists()

    def forward(
        self, method: str, port: int, path: str, body: bytes, authorization: str | None = None
    ) -> tuple[int, bytes, str]:
        """A request to the instance's port (the agent's endpoint proxy there), with the
        caller's Authorization header as the provider's proxy passes it."""
        headers = {"Authorization": authorization} if authorization else {}
        try:
            reply = requests.request(
                method,
                f"http://127.0.0.1:{port}{path}",
                data=body or None,
                headers=headers,
                timeout=30,
            )
        except requests.RequestException:
            return 502, b'{"error": "nothing answers on that port"}', "application/json"
        return reply.status_code, reply.content, reply.headers.get("Content-Type", "")

    def terminate(self, instance_id: str) -> None:
        """Power off, in the background (the provider's API answers at once)."""
        threading.Thread(target=self._power_off, args=(instance_id,), daemon=True).start()

    def close(self) -> None:
        for instance_id in list(self._booted):
            self._power_off(instance_id)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _first_boot(self, instance_id: str) -> bool:
        with self._lock:
            if instance_id in self._booted:
                return False
            self._booted.add(instance_id)
        self.sandbox(instance_id).mkdir(parents=True, exist_ok=True)
        return True

    def _power_off(self, instance_id: str, grace_s: float = 15.0) -> None:
        """`prism node down --stop-all`, then SIGKILL for whatever is left: the agent's group
        and the groups of the models it recorded."""
        state = self.agent_state(instance_id)
        pid = self._agent_pid(state)
        if pid is None:
            return
        (state / "stop-all").touch()  # the agent stops its models on the way out
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        for group in [pid, *_model_pids(state)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    def _agent_pid(self, state: Path, wait_s: float = 10.0) -> int | None:
        """The agent writes its pid file once Python is up: a power-off right after boot waits
        for it (the instance booted, so the agent is starting)."""
        deadline = time.monotonic() + wait_s
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int((state / "agent.pid").read_text())
                return pid if _alive(pid) else None
            if time.monotonic() > deadline or not state.exists():
                return None
            time.sleep(0.1)


def _model_pids(state: Path) -> list[int]:
    """The process groups of the models the agent started (its state file's handles)."""
    try:
        records = json.loads((state / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    pids = []
    for record in records.values() if isinstance(records, dict) else []:
        handle = (record or {}).get("handle") or {}
        ref = str(handle.get("ref", ""))
        if handle.get("runtime") == "process" and ref.split(":")[0].isdigit():
            pids.append(int(ref.split(":")[0]))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie nobody reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    return False
