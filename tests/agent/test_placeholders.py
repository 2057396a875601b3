"""{weights} and {port} in a command run as written on the process runtime: a real model that
takes its port and weights only from its arguments (exec arrays are never shell-expanded)."""

import sys
import threading
import time

import requests

from chalicelib.protocol import DeployConfig, DeployModel
from node_agent.agent import Agent, AgentSettings
from node_agent.ports import free_port
from node_agent.runtime.process import ProcessRuntime

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, weights = int(sys.argv[1]), sys.argv[2]
answer = open(weights + "/answer.txt", "rb").read()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(answer)))
        self.end_headers(); self.wfile.write(answer)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_a_command_gets_its_port_and_weights_from_placeholders(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "answer.txt").write_text("42")
    sent = []
    agent = Agent(
        AgentSettings(node_id="n", state_dir=tmp_path / "state", probe_interval_s=0.2),
        {"process": ProcessRuntime()},
        sent.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    agent.deploy(
        DeployModel(
            deployment_id="dep_00000000000000d1",
            weights_source=str(weights),
            command=[sys.executable, "-c", SERVER, "{port}", "{weights}"],
            deploy_config=DeployConfig(port=free_port(), health_path="/", auth="public"),
        )
    )
    try:
        deadline = time.monotonic() + 20
        while not any(m.type == "deployment_ready" for m in sent):
            assert time.monotonic() < deadline, [m for m in sent if m.type != "deployment_progress"]
            time.sleep(0.05)
        ready = next(m for m in sent if m.type == "deployment_ready")
        port = ready.endpoint_url.rsplit(":", 1)[1]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "42"
    finally:
        agent.stop_all()
        stop.set()
