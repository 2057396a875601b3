"""`prism node up`: register once, then run the agent until SIGTERM / Ctrl-C."""

import faulthandler
import json
import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from chalicelib.protocol import is_local_deployment
from node_agent.agent import Agent, AgentSettings
from node_agent.connection import Connection
from node_agent.runtime.docker import DockerRuntime
from node_agent.runtime.process import ProcessRuntime
from node_agent.server import local_token, make_server

STOP_ALL_MARKER = "stop-all"
log = logging.getLogger("prism.node")


def default_state_dir() -> Path:
    return Path(os.environ.get("PRISM_NODE_STATE", Path.home() / ".local/state/prism-node"))


@dataclass
class NodeConfig:
    api_url: str
    ws_url: str
    node_id: str
    token: str
    name: str

    @classmethod
    def load(cls, state_dir: Path) -> "NodeConfig | None":
        path = state_dir / "node.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "node.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)


def run_agent(
    config: NodeConfig | None,
    state_dir: Path,
    settings: dict,
    heartbeat_s: float = 15.0,
    local_api: tuple[str, int] | None = None,
) -> None:
    """Blocks until SIGTERM/SIGINT. Models keep running across agent restarts unless
    `prism node down --stop-all` asked for them to stop. With no config (standalone) there is
    no control plane: the local API is the only way in."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "agent.pid").write_text(str(os.getpid()))
    (state_dir / STOP_ALL_MARKER).unlink(missing_ok=True)
    stop = threading.Event()  # set by a signal
    disconnect = threading.Event()  # set last, so --stop-all reports still go out
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    connection: Connection | None = None

    def send(message) -> None:
        deployment_id = getattr(message, "deployment_id", None)
        local = deployment_id is not None and is_local_deployment(deployment_id)
        if connection is not None and not local:  # the node's own stay off the control plane
            connection.send(message)
        else:  # standalone, or a local deployment: what the agent reports goes to the log
            log.info("%s", message.to_json())

    node_id = config.node_id if config else "standalone"
    agent = Agent(
        AgentSettings(node_id=node_id, state_dir=state_dir, **settings),
        {"process": ProcessRuntime(), "docker": DockerRuntime()},
        send,
    )
    if config is not None:
        connection = Connection(
            config.ws_url, config.token, agent.on_message, agent.hello, heartbeat_s=heartbeat_s
        )
    agent.adopt_existing()
    threads = [threading.Thread(target=agent.supervise, args=(stop,), daemon=True)]
    if connection is not None:
        threads.append(threading.Thread(target=connection.run, args=(disconnect,), daemon=True))
    server = None if local_api is None else _local_api(agent, local_api, state_dir)
    if server is not None:
        threads.append(threading.Thread(target=server.serve_forever, daemon=True))
    for thread in threads:
        thread.start()
    if config is not None:
        print(f"node {config.name} ({config.node_id}) connecting to {config.ws_url}", flush=True)
    stop.wait()
    if (state_dir / STOP_ALL_MARKER).exists():
        if connection is not None:
            connection.connected.wait(timeout=5)
        agent.stop_all()
    disconnect.set()
    agent.shutdown()  # the endpoints close; the models run on, for the next agent to serve
    if server is not None:
        server.shutdown()
    if connection is not None:
        connection.close()
    (state_dir / "agent.pid").unlink(missing_ok=True)


def _local_api(agent: Agent, address: tuple[str, int], state_dir: Path):
    server = make_server(agent, *address, local_token(state_dir))
    host, port = server.server_address[:2]
    print(f"local API on http://{host}:{port} (token in {state_dir / 'local-token'})", flush=True)
    return server
