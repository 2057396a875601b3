"""`prism node up|down|list`: run this machine as a node, or see your nodes."""

import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import click

from node_agent.reporting import METRICS_INTERVAL_S
from node_agent.runtime.process import start_time
from prism.client import ApiClient
from prism.config import CliConfig, api_client
from prism.output import emit_json, nodes_table


@click.group()
def node():
    """Run this machine as a PRISM node."""


def _state_dir(state_dir: str | None) -> Path:
    from node_agent.main import default_state_dir

    return Path(state_dir) if state_dir else default_state_dir()


@node.command("up")
@click.option(
    "--api",
    "api_url",
    envvar="PRISM_API_URL",
    help="control plane REST URL (default: the CLI config)",
)
@click.option(
    "--ws",
    "ws_url",
    envvar="PRISM_WS_URL",
    help="control plane WebSocket URL (default: the CLI config)",
)
@click.option(
    "--join",
    "join_token",
    envvar="PRISM_NODE_TOKEN",
    help="run as the node this token belongs to, without asking (cloud instances, scripts); "
    "needs --ws",
)
@click.option(
    "--name",
    envvar="PRISM_NODE_NAME",
    help="node name on first registration (default: the host name)",
)
@click.option(
    "--state-dir",
    envvar="PRISM_NODE_STATE",
    help="where the agent keeps its token, state, logs and weights",
)
@click.option(
    "--advertise-host",
    default="127.0.0.1",
    show_default=True,
    help="host in the endpoint URLs this node reports",
)
@click.option("--heartbeat", default=15.0, show_default=True, type=click.FloatRange(0.5))
@click.option("--probe-interval", default=10.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--startup-timeout", default=600.0, show_default=True, type=click.FloatRange(1))
@click.option(
    "--metrics-interval",
    default=METRICS_INTERVAL_S,
    show_default=True,
    type=click.FloatRange(0.1),
    help="seconds between reports of each endpoint's request counts and latency",
)
@click.option(
    "--local-api-port",
    default=7070,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="the node's own HTTP API on 127.0.0.1 (0: any)",
)
@click.option(
    "--cache-max-gb",
    type=click.FloatRange(0.001),
    help="cap of the node's weights cache; least recently used unused weights go first "
    "(default: 80% of the disk)",
)
@click.option("--no-local-api", is_flag=True, help="do not serve the node's own HTTP API")
@click.option(
    "--standalone", is_flag=True, help="no control plane: run models through the local API only"
)
def node_up(
    api_url,
    ws_url,
    join_token,
    name,
    state_dir,
    advertise_host,
    heartbeat,
    probe_interval,
    startup_timeout,
    metrics_interval,
    local_api_port,
    cache_max_gb,
    no_local_api,
    standalone,
):
    """Register (first time only) and run the node agent until Ctrl-C."""
    from node_agent.main import run_agent

    state = _state_dir(state_dir)
    local_api = None if no_local_api else ("127.0.0.1", local_api_port)
    if standalone and local_api is None:
        raise click.UsageError("--standalone needs the local API (drop --no-local-api)")
    if standalone:
        config = None
    elif join_token:
        config = _join(state, join_token, api_url, ws_url, name)
    else:
        config = _saved(state, api_url, ws_url) or _register(state, api_url, ws_url, name)
    settings = {
        "advertise_host": advertise_host,
        "probe_interval_s": probe_interval,
        "startup_timeout_s": startup_timeout,
        "metrics_interval_s": metrics_interval,
        "weights_cache_max_bytes": int(cache_max_gb * 1e9) if cache_max_gb else None,
    }
    run_agent(config, state, settings, heartbeat_s=heartbeat, local_api=local_api)


def _saved(state: Path, api_url: str | None, ws_url: str | None):
    """The node this state dir already is; --api / --ws given now say where the control plane
    is now (it moved, or a local platform restarted on other ports)."""
    from node_agent.main import NodeConfig

    config = NodeConfig.load(state)
    if config is None:
        return None
    moved = replace(config, api_url=api_url or config.api_url, ws_url=ws_url or config.ws_url)
    if moved != config:
        moved.save(state)
    return moved


def _join(state: Path, token: str, api_url: str | None, ws_url: str | None, name: str | None):
    """Become the node the token names: no API key, no prompt. A newer token for the same node
    replaces the saved one."""
    from chalicelib.protocol import node_id_of_token
    from node_agent.main import NodeConfig

    node_id = node_id_of_token(token)
    if node_id is None:
        raise click.BadParameter(
            "not a node token (prismnode_<node id>.<secret>)", param_hint="--join"
        )
    if not ws_url:
        raise click.UsageError(
            "--join needs the control plane's WebSocket URL (--ws or PRISM_WS_URL)"
        )
    config = NodeConfig(
        api_url=api_url or "",
        ws_url=ws_url,
        node_id=node_id,
        token=token,
        name=name or _default_name(),
    )
    config.save(state)
    return config


def _register(state: Path, api_url: str | None, ws_url: str | None, name: str | None):
    from node_agent.main import NodeConfig

    cli = CliConfig.load()
    api_url = api_url or cli.api_url
    ws_url = ws_url or cli.ws_url
    if not api_url or not ws_url or not cli.api_key:
        raise click.ClickException(
            "first start needs the API (--api, --ws or `prism dev up`'s config) and "
            "PRISM_API_KEY to register this node"
        )
    name = name or _default_name()
    created = ApiClient(api_url, cli.api_key).register_node(name)
    config = NodeConfig(
        api_url=api_url, ws_url=ws_url, node_id=created["id"], token=created["token"], name=name
    )
    config.save(state)
    click.echo(f"registered node {name} as {config.node_id}")
    return config


@node.command("down")
@click.option("--state-dir", help="the agent's state dir (as given to `node up`)")
@click.option("--stop-all", is_flag=True, help="also stop every model it runs")
@click.option("--timeout", default=60.0, show_default=True)
def node_down(state_dir, stop_all, timeout):
    """Stop the node agent. Models keep running (and are re-adopted by the next `node up`)
    unless --stop-all."""
    from node_agent.main import STOP_ALL_MARKER

    state = _state_dir(state_dir)
    try:
        pid = int((state / "agent.pid").read_text())
    except (FileNotFoundError, ValueError):
        raise click.ClickException(f"no node agent is running from {state}") from None
    if stop_all:
        (state / STOP_ALL_MARKER).touch()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (state / "agent.pid").unlink(missing_ok=True)
        raise click.ClickException(
            "the node agent was not running (stale pid file removed)"
        ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if start_time(pid) is None:  # gone, or a zombie its parent has not reaped
            click.echo("node agent stopped" + (" with all its models" if stop_all else ""))
            return
        time.sleep(0.1)
    raise click.ClickException(f"the node agent (pid {pid}) did not stop within {timeout}s")


@node.command("list")
@click.option("--json", "as_json", is_flag=True)
def node_list(as_json):
    """Your nodes, their status and GPUs."""
    nodes = api_client().list_nodes()["items"]
    emit_json(nodes) if as_json else nodes_table(nodes)


def _default_name() -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())
    return cleaned.strip("-")[:63] or "node"
