"""`prism node up`: register once, then run the agent until SIGTERM / Ctrl-C."""

import json
import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from node_agent.agent import Agent, AgentSettings
from node_agent.connection import Connection
from node_agent.runtime.docker import DockerRuntime
from node_agent.runtime.process import ProcessRuntime

STOP_ALL_MARKER = "stop-all"


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
    config: NodeConfig,
    state_dir: Path,
    settings: dict,
    heartbeat_s: float = 15.0,
) -> None:
    """Blocks until SIGTERM/SIGINT. Models keep running across agent restarts unless
    `prism node down --stop-all` asked for them to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    (state_dir / "agent.pid").write_text(str(os.getpid()))
    (state_dir / STOP_ALL_MARKER).unlink(missing_ok=True)
    stop = threading.Event()  # set by a signal
    disconnect = threading.Event()  # set last, so --stop-all reports still go out
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    connection: Connection | None = None

    def send(message) -> None:
        connection.send(message)

    agent = Agent(
        AgentSettings(node_id=config.node_id, state_dir=state_dir, **settings),
        {"process": ProcessRuntime(), "docker": DockerRuntime()},
        send,
    )
    connection = Connection(
        config.ws_url, config.token, agent.on_message, agent.hello, heartbeat_s=heartbeat_s
    )
    agent.adopt_existing()
    threads = [
        threading.Thread(target=connection.run, args=(disconnect,), daemon=True),
        threading.Thread(target=agent.supervise, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    print(f"node {config.name} ({config.node_id}) connecting to {config.ws_url}", flush=True)
    stop.wait()
    if (state_dir / STOP_ALL_MARKER).exists():
        connection.connected.wait(timeout=5)
        agent.stop_all()
    disconnect.set()
    connection.close()
    (state_dir / "agent.pid").unlink(missing_ok=True)
