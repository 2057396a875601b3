"""A deployment on a node of its own (a cloud instance's agent) gets every GPU the node has,
whatever type was asked for: the provider rented exactly that machine for it."""

import json
import sys
import threading
import time

from chalicelib.protocol import DeployConfig, DeployModel, GpuInfo
from node_agent.agent import Agent, AgentSettings
from node_agent.ports import free_port
from node_agent.runtime.process import ProcessRuntime

SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
open(sys.argv[1], "w").write(json.dumps({"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def gpu(index, name):
    return GpuInfo(index=index, name=name, uuid=f"GPU-{index}", memory_total_mb=81920)


def test_the_whole_node_deployment_sees_every_gpu(tmp_path):
    sent = []
    agent = Agent(
        AgentSettings(node_id="n", state_dir=tmp_path, probe_interval_s=0.2),
        {"process": ProcessRuntime()},
        sent.append,
    )
    agent.gpus = [gpu(0, "NVIDIA H100 80GB HBM3"), gpu(1, "NVIDIA H100 80GB HBM3")]
    seen = tmp_path / "seen.json"
    agent.deploy(
        DeployModel(
            deployment_id="dep_00000000000000e1",
            command=[sys.executable, "-c", SERVER, str(seen)],
            deploy_config=DeployConfig(port=free_port(), health_path="/health"),
            gpu=True,
            gpu_type="A100",  # no such GPU here: a whole node claims nothing, it has them all
            whole_node=True,
        )
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while not any(m.type == "deployment_ready" for m in sent):
            assert time.monotonic() < deadline, [m.type for m in sent]
            assert not any(m.type == "deployment_stopped" for m in sent), sent
            time.sleep(0.05)
        assert json.loads(seen.read_text()) == {"visible": "0,1"}
    finally:
        agent.stop_all()
        stop.set()
