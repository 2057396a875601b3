"""GPU detection and passthrough, for real, on a machine with an NVIDIA GPU (not a test: CI has
no GPU). Checks:
1. node_agent.gpus.inventory() lists the GPUs NVML sees;
2. the process runtime shows a model exactly the GPUs assigned (CUDA_VISIBLE_DEVICES), as
   CUDA itself reports them (torch), and none when none is assigned;
3. the agent, asked for a deployment with gpu=true and a gpu_type, claims a matching GPU and the
   model sees it; a second GPU deployment on a one-GPU node is refused with a clear reason;
4. a whole-node deployment (what a cloud instance's agent is sent) sees every GPU.

    python3 benchmarks/gpu_check.py

On a GPU machine without the agent's packages (and no internet), carry wheels there:
    pip download --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \
        -d wheels -r requirements-agent.txt
    pip install --no-index --find-links wheels --target /tmp/deps -r requirements-agent.txt
    PYTHONPATH=/tmp/deps:. python3 benchmarks/gpu_check.py
Last run (2026-11-27, one H100 80GB HBM3, torch 2.11): all four checks passed.
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chalicelib.protocol import DeployConfig, DeployModel  # noqa: E402
from node_agent import gpus  # noqa: E402
from node_agent.agent import Agent, AgentSettings  # noqa: E402
from node_agent.ports import free_port  # noqa: E402
from node_agent.runtime.base import LaunchSpec  # noqa: E402
from node_agent.runtime.process import ProcessRuntime, tail_lines  # noqa: E402

PROBE = (
    "import os, torch; print(json.dumps({'visible': os.environ.get('CUDA_VISIBLE_DEVICES'),"
    " 'count': torch.cuda.device_count(), 'names': [torch.cuda.get_device_name(i) for i in"
    " range(torch.cuda.device_count())]}))"
)
SERVER = """
import json, os, torch
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({'visible': os.environ.get('CUDA_VISIBLE_DEVICES'),
                           'names': [torch.cuda.get_device_name(i)
                                     for i in range(torch.cuda.device_count())]}).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"""


def run_probe(runtime: ProcessRuntime, work: Path, indices: list[int]) -> dict:
    log = work / f"probe-{'-'.join(map(str, indices)) or 'none'}.log"
    handle = runtime.start(
        LaunchSpec(
            deployment_id="dep_0000000000000000",
            port=free_port(),
            command=[sys.executable, "-c", "import json; " + PROBE],
            gpu_indices=indices,
            log_path=log,
        )
    )
    while runtime.is_running(handle):
        time.sleep(0.05)
    return json.loads(tail_lines(log, 1)[0])


def main() -> None:
    work = Path(tempfile.mkdtemp())
    found = gpus.inventory()
    print("1. inventory:", [g.model_dump() for g in found])
    assert found, "NVML found no GPU"

    runtime = ProcessRuntime()
    assigned = run_probe(runtime, work, [found[0].index])
    print("2. assigned GPU", found[0].index, "->", assigned)
    assert assigned["visible"] == str(found[0].index) and assigned["count"] == 1
    none = run_probe(runtime, work, [])
    print("   no GPU assigned ->", none)
    assert none["visible"] == "" and none["count"] == 0

    messages = []
    agent = Agent(
        AgentSettings(node_id="gpu-check", state_dir=work / "state", probe_interval_s=1.0),
        {"process": runtime},
        messages.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    gpu_type = found[0].name.split()[-1] if " " in found[0].name else found[0].name
    wanted = "H100" if "H100" in found[0].name else gpu_type
    first = DeployModel(
        deployment_id="dep_00000000000000a1",
        command=[sys.executable, "-c", SERVER],
        gpu=True,
        gpu_type=wanted,
        deploy_config=DeployConfig(port=free_port(), health_path="/", auth="public"),
    )
    agent.deploy(first)
    ready = wait_for(messages, "deployment_ready", first.deployment_id)
    import requests

    seen = requests.get(ready.endpoint_url, timeout=5).json()
    print(
        f"3. agent deployment with gpu_type={wanted!r} ->",
        seen,
        "claimed",
        agent.records[first.deployment_id].gpu_indices,
    )
    assert seen["visible"] == str(found[0].index) and len(seen["names"]) == 1
    if len(found) == 1:
        second = first.model_copy(update={"deployment_id": "dep_00000000000000a2"})
        agent.deploy(second)
        refused = wait_for(messages, "deployment_stopped", second.deployment_id)
        print("   second GPU deployment on a one-GPU node ->", refused.reason, refused.message)
        assert refused.reason == "start_error" and "no free" in refused.message
    agent.stop_all()

    # 4. The deploy message the control plane sends the agent on a cloud instance of the
    # deployment's own: every GPU, whatever type was asked for.
    whole = first.model_copy(
        update={
            "deployment_id": "dep_00000000000000a3",
            "gpu_type": "some-other-gpu",
            "whole_node": True,
            "deploy_config": DeployConfig(port=free_port(), health_path="/", auth="public"),
        }
    )
    agent.deploy(whole)
    ready = wait_for(messages, "deployment_ready", whole.deployment_id)
    seen = requests.get(ready.endpoint_url, timeout=5).json()
    print("4. whole-node deployment (a cloud instance's agent) ->", seen)
    assert seen["visible"] == ",".join(str(g.index) for g in found)
    assert seen["names"] == [g.name for g in found]
    agent.stop_all()
    stop.set()
    print("GPU checks passed")


def wait_for(messages, kind, deployment_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in messages:
            if m.type == kind and getattr(m, "deployment_id", None) == deployment_id:
                return m
            if m.type == "deployment_stopped" and m.deployment_id == deployment_id:
                raise SystemExit(f"{deployment_id} stopped: {m.reason} {m.message}")
        time.sleep(0.05)
    raise SystemExit(f"no {kind} for {deployment_id} within {timeout}s")


if __name__ == "__main__":
    main()
