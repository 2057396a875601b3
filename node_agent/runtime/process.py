"""Runs a model as a local process: exec array (never a shell), its own process group, a clean
environment (runtime.base.INHERITED_ENV), output to a size-capped log file, SIGTERM then
SIGKILL. A restarted agent re-adopts it by pid + start time (so a recycled pid is never
mistaken for our process)."""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from node_agent.ports import group_members, listener_pids
from node_agent.runtime.base import (
    MODEL_HOST,
    Handle,
    LaunchError,
    LaunchSpec,
    inherited_env,
)

LOG_CAP_BYTES = 10 * 1024 * 1024


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None
    when it is gone or a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return fields[19]


def _parse_ref(ref: str) -> tuple[int, str]:
    pid, _, started = ref.partition(":")
    return int(pid), started


class ProcessRuntime:
    name = "process"

    def __init__(self):
        self._children: dict[int, subprocess.Popen] = {}  # only processes this agent started

    def start(self, spec: LaunchSpec) -> Handle:
        if not spec.command:
            raise LaunchError("no command to run")
        # A clean environment: the allow-listed part of ours, the deployment's, then ours on top.
        # HOST asks it to listen on loopback only (behind the proxy); a server may ignore it.
        env = inherited_env(os.environ) | spec.env
        env |= {
            "PORT": str(spec.port),
            "HOST": MODEL_HOST,
            "PRISM_DEPLOYMENT_ID": spec.deployment_id,  # which deployment a process serves
        }
        if spec.weights_dir is not None:
            env["PRISM_WEIGHTS_DIR"] = str(spec.weights_dir)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_indices)
        log_path = spec.log_path or Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    spec.command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=spec.weights_dir
                    if spec.weights_dir and spec.weights_dir.is_dir()
                    else None,
                )
        except OSError as exc:  # not found, not executable, not a program (no shebang), ...
            raise LaunchError(f"cannot run {spec.command[0]!r}: {exc.strerror}") from None
        self._children[process.pid] = process
        started = start_time(process.pid) or "0"
        return Handle(spec.deployment_id, self.name, f"{process.pid}:{started}", spec.port)

    def adopt(self, handle: Handle) -> bool:
        pid, started = _parse_ref(handle.ref)
        return start_time(pid) == started

    def is_running(self, handle: Handle) -> bool:
        pid, _ = _parse_ref(handle.ref)
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return self.adopt(handle)

    def exit_code(self, handle: Handle) -> int | None:
        """Known for processes this agent started; an adopted one's code is lost with its
        parent, so None."""
        child = self._children.get(_parse_ref(handle.ref)[0])
        return None if child is None else child.poll()

    def stop(self, handle: Handle, grace_seconds: float) -> int | None:
        """SIGTERM the whole process group, SIGKILL whatever is left after the grace period.
        The group is signalled even when its leader already exited (its workers may not have),
        but only for a process we started or re-adopted, or a group still alive under the
        leader's pid (Linux never reuses a pid while a group is named by it), never a
        recycled pid."""
        pid, _ = _parse_ref(handle.ref)
        child = self._children.get(pid)
        if child is None and not self.adopt(handle) and not group_members(pid):
            return None
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _group_alive(pid):
            if child is not None:
                child.poll()  # reap our own leader, or its zombie keeps the group "alive"
            time.sleep(0.05)
        self._signal_group(pid, signal.SIGKILL)
        self._children.pop(pid, None)
        if child is not None:
            return child.wait(timeout=10)
        while self.adopt(handle):
            time.sleep(0.05)
        return None

    def serves(self, handle: Handle, port: int) -> bool:
        """A process of its group holds the listening socket (True where /proc cannot tell)."""
        pid, _ = _parse_ref(handle.ref)
        holders = listener_pids(port, group_members(pid))
        return holders is None or bool(holders)

    def logs(self, handle: Handle, tail: int, log_path: Path | None = None) -> list[str]:
        return tail_lines(log_path, tail) if log_path else []

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)  # the model's whole process group: workers die with it


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def tail_lines(path: Path, count: int, max_bytes: int = 1024 * 1024) -> list[str]:
    if count <= 0:
        return []
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - max_bytes))
            data = log.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-count:]


def cap_log(path: Path, cap: int = LOG_CAP_BYTES) -> None:
    """Keep the newest half when a log passes `cap` (the child appends with O_APPEND, so it
    carries on at the new end)."""
    try:
        if path.stat().st_size <= cap:
            return
        with open(path, "r+b") as log:
            log.seek(-cap // 2, os.SEEK_END)
            keep = log.read()
            log.seek(0)
            log.write(keep)
            log.truncate()
    except OSError:
        pass
