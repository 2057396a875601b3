"""ProcessRuntime with real child processes (sys.executable -c ...), and the log helpers."""

import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from node_agent.runtime.base import Handle, LaunchError, LaunchSpec
from node_agent.runtime.process import ProcessRuntime, cap_log, tail_lines

PY = sys.executable

# Writes what the model would see (env, cwd, argv) as JSON to argv[1].
REPORT_ENV = """
import json, os, sys
with open(sys.argv[1], "w") as out:
    json.dump({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[2:]}, out)
"""
SLEEP = "import time; time.sleep(30)"
# Ignores SIGTERM, then says it is ready by creating argv[1].
IGNORE_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").close()
time.sleep(30)
"""
# Starts a grandchild (a "worker") running argv[2], which writes its own pid to argv[1].
SPAWN_WORKER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]])
time.sleep(30)
"""
# Like SPAWN_WORKER, but exits with code 3 (a crash) once the worker is up.
CRASH_AFTER_SPAWNING = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]])
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
sys.exit(3)
"""
WORKER = """
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(30)
"""
WORKER_IGNORING_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + WORKER


def wait_until(predicate, timeout: float = 3.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie that nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def pid_of(handle: Handle) -> int:
    return int(handle.ref.partition(":")[0])


def spec(tmp_path: Path, command: list[str], **overrides) -> LaunchSpec:
    return LaunchSpec(
        **{
            "deployment_id": "d1",
            "port": 9123,
            "command": command,
            "log_path": tmp_path / "logs" / "d1.log",
            **overrides,
        }
    )


@pytest.fixture
def started():
    """Start specs on a runtime; everything still running is killed at teardown."""
    launched: list[tuple[ProcessRuntime, Handle]] = []

    def start(runtime: ProcessRuntime, launch: LaunchSpec) -> Handle:
        handle = runtime.start(launch)
        launched.append((runtime, handle))
        return handle

    yield start
    for runtime, handle in launched:
        runtime.stop(handle, grace_seconds=0)


@pytest.fixture
def runtime():
    return ProcessRuntime()


def run_to_exit(runtime: ProcessRuntime, started, launch: LaunchSpec) -> Handle:
    handle = started(runtime, launch)
    wait_until(lambda: not runtime.is_running(handle))
    return handle


# --- start: environment, exec array, logs --------------------------------------------------


def test_start_passes_port_weights_dir_gpus_and_user_env(runtime, started, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    report = tmp_path / "report.json"
    launch = spec(
        tmp_path,
        [PY, "-c", REPORT_ENV, str(report)],
        port=9123,
        weights_dir=weights,
        gpu_indices=[0, 2],
        env={"MODEL_NAME": "tiny-llm", "HF_HOME": "/cache/hf"},
    )

    handle = run_to_exit(runtime, started, launch)

    seen = json.loads(report.read_text())
    assert handle == Handle("d1", "process", handle.ref, 9123)
    assert seen["env"]["PORT"] == "9123"
    assert seen["env"]["PRISM_WEIGHTS_DIR"] == str(weights)
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert seen["env"]["MODEL_NAME"] == "tiny-llm"
    assert seen["env"]["HF_HOME"] == "/cache/hf"
    assert seen["cwd"] == str(weights)  # the model runs next to its weights
    assert "PATH" in seen["env"]  # an ordinary environment is inherited


def test_no_gpus_means_an_empty_cuda_visible_devices_not_the_agents(
    runtime, started, tmp_path, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    report = tmp_path / "report.json"

    run_to_exit(runtime, started, spec(tmp_path, [PY, "-c", REPORT_ENV, str(report)]))

    env = json.loads(report.read_text())["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "PRISM_WEIGHTS_DIR" not in env


def test_the_agents_own_prism_and_aws_variables_are_not_passed_through(
    runtime, started, tmp_path, monkeypatch
):
    monkeypatch.setenv("PRISM_NODE_TOKEN", "node-secret")
    monkeypatch.setenv("PRISM_API_URL", "https://control-plane.example")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "aws-session")
    report = tmp_path / "report.json"

    run_to_exit(runtime, started, spec(tmp_path, [PY, "-c", REPORT_ENV, str(report)]))

    env = json.loads(report.read_text())["env"]
    leaked = sorted(k for k in env if k.startswith(("PRISM_", "AWS_")))
    assert leaked == ["PRISM_DEPLOYMENT_ID"]  # the agent's word to the model, not its own
    assert "node-secret" not in json.dumps(env)
    assert "aws-secret" not in json.dumps(env)


def test_user_env_cannot_override_the_assigned_port_or_gpus(runtime, started, tmp_path):
    report = tmp_path / "report.json"
    launch = spec(
        tmp_path,
        [PY, "-c", REPORT_ENV, str(report)],
        port=9123,
        gpu_indices=[1],
        env={"PORT": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
    )

    run_to_exit(runtime, started, launch)

    env = json.loads(report.read_text())["env"]
    assert env["PORT"] == "9123"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_command_is_an_exec_array_never_a_shell(runtime, started, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    report = tmp_path / "report.json"
    hostile = [
        "; touch injected-semicolon",
        "$(touch injected-subshell)",
        "`touch injected-backtick`",
        "&& touch injected-and",
        "| touch injected-pipe",
        "*",
        "$HOME",
    ]

    run_to_exit(
        runtime,
        started,
        spec(tmp_path, [PY, "-c", REPORT_ENV, str(report), *hostile], weights_dir=weights),
    )

    seen = json.loads(report.read_text())
    assert seen["argv"] == hostile  # every argument arrives literally
    assert list(weights.iterdir()) == []  # nothing was run by a shell in the model's cwd
    assert not list(tmp_path.glob("injected-*"))
    assert not list(Path.cwd().glob("injected-*"))


def test_stdout_and_stderr_go_to_the_log_file_and_restarts_append(runtime, started, tmp_path):
    script = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)"
    launch = spec(tmp_path, [PY, "-c", script])

    run_to_exit(runtime, started, launch)
    handle = run_to_exit(runtime, started, launch)

    assert launch.log_path.parent.is_dir()  # created on demand
    lines = launch.log_path.read_text().splitlines()
    assert sorted(lines) == sorted(["to stdout", "to stderr"] * 2)
    assert runtime.logs(handle, 2, launch.log_path) == lines[-2:]


def test_logs_without_a_log_path_are_empty(runtime, started, tmp_path):
    handle = run_to_exit(runtime, started, spec(tmp_path, [PY, "-c", "print('x')"]))

    assert runtime.logs(handle, 10) == []


def test_the_model_runs_in_its_own_session_and_process_group(runtime, started, tmp_path):
    handle = started(runtime, spec(tmp_path, [PY, "-c", SLEEP]))
    pid = pid_of(handle)

    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)


def test_a_missing_executable_raises_a_clear_runtime_error(runtime, tmp_path):
    missing = str(tmp_path / "no-such-model-server")

    with pytest.raises(LaunchError, match=re.escape(f"cannot run {missing!r}")) as raised:
        runtime.start(spec(tmp_path, [missing, "--port", "9123"]))

    assert "No such file or directory" in str(raised.value)


def test_a_file_that_is_not_executable_raises_a_runtime_error(runtime, tmp_path):
    script = tmp_path / "serve.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    with pytest.raises(LaunchError, match="Permission denied"):
        runtime.start(spec(tmp_path, [str(script)]))


def test_an_empty_command_is_refused(runtime, tmp_path):
    with pytest.raises(LaunchError, match="no command"):
        runtime.start(spec(tmp_path, []))


# --- watching an exit ----------------------------------------------------------------------


def test_a_running_process_has_no_exit_code_yet(runtime, started, tmp_path):
    handle = started(runtime, spec(tmp_path, [PY, "-c", SLEEP]))

    assert runtime.is_running(handle)
    assert runtime.exit_code(handle) is None


def test_is_running_and_exit_code_after_the_child_exits_with_7(runtime, started, tmp_path):
    handle = started(runtime, spec(tmp_path, [PY, "-c", "import sys; sys.exit(7)"]))

    wait_until(lambda: not runtime.is_running(handle))

    assert runtime.exit_code(handle) == 7
    assert runtime.stop(handle, grace_seconds=5) == 7  # stopping an exited process is a no-op


# --- stop -----------------------------------------------------------------------------------


def test_stop_sends_sigterm_and_returns_without_waiting_out_the_grace(runtime, started, tmp_path):
    handle = started(runtime, spec(tmp_path, [PY, "-c", SLEEP]))

    began = time.monotonic()
    code = runtime.stop(handle, grace_seconds=10)

    assert code == -signal.SIGTERM
    assert time.monotonic() - began < 2
    assert gone(pid_of(handle))
    assert not runtime.is_running(handle)


def test_stop_terminates_the_whole_process_group(runtime, started, tmp_path):
    worker_pid_file = tmp_path / "worker.pid"
    handle = started(
        runtime, spec(tmp_path, [PY, "-c", SPAWN_WORKER, str(worker_pid_file), WORKER])
    )
    wait_until(worker_pid_file.exists)
    worker = int(worker_pid_file.read_text())
    assert not gone(worker)

    runtime.stop(handle, grace_seconds=3)

    assert gone(pid_of(handle))
    wait_until(lambda: gone(worker), timeout=2)


def test_stop_escalates_to_sigkill_after_the_grace_period(runtime, started, tmp_path):
    ready = tmp_path / "ready"
    handle = started(runtime, spec(tmp_path, [PY, "-c", IGNORE_SIGTERM, str(ready)]))
    wait_until(ready.exists)

    began = time.monotonic()
    code = runtime.stop(handle, grace_seconds=0.5)
    elapsed = time.monotonic() - began

    assert code == -signal.SIGKILL
    assert 0.5 <= elapsed < 0.5 + 1.0
    assert gone(pid_of(handle))


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(runtime, started, tmp_path):
    worker_pid_file = tmp_path / "worker.pid"
    handle = started(
        runtime,
        spec(tmp_path, [PY, "-c", SPAWN_WORKER, str(worker_pid_file), WORKER_IGNORING_SIGTERM]),
    )
    wait_until(worker_pid_file.exists)
    worker = int(worker_pid_file.read_text())
    try:
        runtime.stop(handle, grace_seconds=0.3)

        wait_until(lambda: gone(worker), timeout=1.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)  # never leak the orphan, whatever the outcome


def test_stop_after_the_model_crashed_still_ends_its_workers(runtime, started, tmp_path):
    worker_pid_file = tmp_path / "worker.pid"
    handle = started(
        runtime, spec(tmp_path, [PY, "-c", CRASH_AFTER_SPAWNING, str(worker_pid_file), WORKER])
    )
    wait_until(lambda: not runtime.is_running(handle))
    worker = int(worker_pid_file.read_text())
    try:
        assert runtime.stop(handle, grace_seconds=1) == 3

        wait_until(lambda: gone(worker), timeout=1.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


# --- adopt: a restarted agent finds its models again -----------------------------------------


def test_a_restarted_agent_adopts_a_live_process(started, tmp_path):
    before_restart = ProcessRuntime()
    handle = started(before_restart, spec(tmp_path, [PY, "-c", SLEEP]))

    after_restart = ProcessRuntime()

    assert after_restart.adopt(handle)
    assert after_restart.is_running(handle)
    assert after_restart.exit_code(handle) is None  # lost with the old agent


def test_a_recycled_pid_with_another_start_time_is_not_adopted(started, tmp_path):
    handle = started(ProcessRuntime(), spec(tmp_path, [PY, "-c", SLEEP]))
    pid, _, start_time = handle.ref.partition(":")
    recycled = Handle("d1", "process", f"{pid}:{int(start_time) + 1}", handle.port)

    after_restart = ProcessRuntime()

    assert not after_restart.adopt(recycled)
    assert not after_restart.is_running(recycled)


def test_a_process_that_is_gone_is_not_adopted(started, tmp_path):
    before_restart = ProcessRuntime()
    handle = started(before_restart, spec(tmp_path, [PY, "-c", SLEEP]))
    before_restart.stop(handle, grace_seconds=2)

    assert not ProcessRuntime().adopt(handle)


def test_an_exited_but_unreaped_process_is_not_adopted(started, tmp_path):
    before_restart = ProcessRuntime()
    handle = started(before_restart, spec(tmp_path, [PY, "-c", "pass"]))
    wait_until(lambda: gone(pid_of(handle)))  # a zombie: exited, its parent has not waited

    assert Path(f"/proc/{pid_of(handle)}").exists()
    assert not ProcessRuntime().adopt(handle)


def test_stop_works_on_an_adopted_process(started, tmp_path):
    before_restart = ProcessRuntime()
    handle = started(before_restart, spec(tmp_path, [PY, "-c", SLEEP]))
    after_restart = ProcessRuntime()
    assert after_restart.adopt(handle)

    assert after_restart.stop(handle, grace_seconds=3) is None  # the code died with the parent

    assert not after_restart.is_running(handle)
    assert before_restart.exit_code(handle) == -signal.SIGTERM  # it was SIGTERM that ended it


def test_stop_escalates_to_sigkill_on_an_adopted_process(started, tmp_path):
    ready = tmp_path / "ready"
    before_restart = ProcessRuntime()
    handle = started(before_restart, spec(tmp_path, [PY, "-c", IGNORE_SIGTERM, str(ready)]))
    wait_until(ready.exists)
    after_restart = ProcessRuntime()

    began = time.monotonic()
    after_restart.stop(handle, grace_seconds=0.5)

    assert 0.5 <= time.monotonic() - began < 0.5 + 1.0
    assert before_restart.exit_code(handle) == -signal.SIGKILL


# --- tail_lines -----------------------------------------------------------------------------


def test_tail_lines_returns_the_last_n_lines(tmp_path):
    log = tmp_path / "model.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))

    assert tail_lines(log, 3) == ["line 7", "line 8", "line 9"]
    assert tail_lines(log, 100) == [f"line {i}" for i in range(10)]


def test_tail_lines_of_a_missing_file_is_empty(tmp_path):
    assert tail_lines(tmp_path / "never-written.log", 5) == []


def test_tail_lines_reads_only_the_end_of_a_big_file(tmp_path):
    log = tmp_path / "model.log"
    log.write_text("".join(f"{i:09d}\n" for i in range(10_000)))  # 10 bytes a line

    lines = tail_lines(log, 1_000, max_bytes=100)

    assert lines == [f"{i:09d}" for i in range(9_990, 10_000)]


def test_tail_lines_survives_bytes_that_are_not_utf8(tmp_path):
    log = tmp_path / "model.log"
    log.write_bytes(b"ok\n\xff\xfe broken\nlast\n")

    assert tail_lines(log, 2) == ["\ufffd\ufffd broken", "last"]


def test_tail_lines_of_zero_is_empty(tmp_path):
    log = tmp_path / "model.log"
    log.write_text("a\nb\n")

    assert tail_lines(log, 0) == []


# --- cap_log --------------------------------------------------------------------------------


def test_cap_log_leaves_a_small_file_alone(tmp_path):
    log = tmp_path / "model.log"
    log.write_bytes(b"x" * 100)

    cap_log(log, cap=100)

    assert log.read_bytes() == b"x" * 100


def test_cap_log_keeps_the_newest_part_when_the_file_passes_the_cap(tmp_path):
    log = tmp_path / "model.log"
    original = "".join(f"{i:09d}\n" for i in range(1_000)).encode()  # 10,000 bytes
    log.write_bytes(original)

    cap_log(log, cap=2_000)

    kept = log.read_bytes()
    assert kept == original[-1_000:]  # the newest half of the cap
    assert tail_lines(log, 1) == ["000000999"]


def test_cap_log_of_a_missing_file_does_nothing(tmp_path):
    cap_log(tmp_path / "never-written.log", cap=10)

    assert not (tmp_path / "never-written.log").exists()


def test_an_append_writer_carries_on_at_the_new_end_after_the_cap(tmp_path):
    log = tmp_path / "model.log"
    with open(log, "ab") as writer:  # O_APPEND, as the model's stdout is opened
        writer.write(b"a" * 5_000)
        writer.flush()

        cap_log(log, cap=1_000)
        writer.write(b"after\n")
        writer.flush()

    assert log.read_bytes() == b"a" * 500 + b"after\n"  # no hole of NULs, nothing overwritten


def test_a_running_model_keeps_logging_after_its_log_is_capped(runtime, started, tmp_path):
    go = tmp_path / "go"
    script = f"""
import os, sys, time
sys.stdout.write("x" * 9_999 + "\\n")
sys.stdout.flush()
while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
print("after the cap", flush=True)
"""
    launch = spec(tmp_path, [PY, "-c", script])
    handle = started(runtime, launch)
    wait_until(lambda: launch.log_path.exists() and launch.log_path.stat().st_size >= 10_000)

    cap_log(launch.log_path, cap=2_000)
    go.touch()
    wait_until(lambda: not runtime.is_running(handle))

    data = launch.log_path.read_bytes()
    assert data == b"x" * 999 + b"\n" + b"after the cap\n"
    assert b"\0" not in data


def test_a_file_that_is_not_a_program_is_a_clear_start_error(tmp_path):
    from node_agent.runtime.base import LaunchError, LaunchSpec
    from node_agent.runtime.process import ProcessRuntime

    script = tmp_path / "serve"
    script.write_text("print('no shebang')\n")
    script.chmod(0o755)
    with pytest.raises(LaunchError, match="cannot run"):
        ProcessRuntime().start(
            LaunchSpec(deployment_id="dep_0000000000000001", port=1, command=[str(script)])
        )
