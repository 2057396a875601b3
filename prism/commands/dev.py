"""`prism dev up`: the whole platform on this machine, until Ctrl-C."""

import os
import signal
import threading
from pathlib import Path

import click

from prism.config import CliConfig
from prism.dev.demo import run_demo
from prism.dev.local_state import LocalState
from prism.dev.platform import LocalPlatform, PlatformError


@click.group()
def dev():
    """Run the platform locally."""


def _announce(platform: LocalPlatform, user: dict) -> dict:
    """Write the CLI config and print what the CLI needs; returns the CLI's environment."""
    access_key, secret_key = platform.operator_keys()
    path = CliConfig(
        ws_url=platform.ws_url,
        api_url=platform.api_url,
        api_key=user["api_key"],
        aws_endpoint_url=platform.aws_url,
        stage="dev",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        ws_management_url=platform.management_url,
    ).save()
    click.echo(f"PRISM_API_URL={platform.api_url}")
    click.echo(f"PRISM_API_KEY={user['api_key']}")
    click.echo(f"PRISM_WS_URL={platform.ws_url}")
    click.echo(f"# console at {platform.api_url}/console (sign in with PRISM_API_KEY)")
    click.echo(f"# AWS (moto) at {platform.aws_url}; CLI config written to {path}")
    click.echo(
        f"# state and logs in {platform.state.root} (kept across restarts; --fresh starts "
        "empty); Ctrl-C stops everything"
    )
    if platform.fake_hub:
        click.echo(
            f"# fake Hugging Face Hub at {platform.hub_url} (hf://prism/tiny-regressor, "
            "hf://sentence-transformers/paraphrase-MiniLM-L3-v2)"
        )
    if platform.fake_clouds:
        host = platform.host
        click.echo(
            f"# fake RunPod at http://{host}:{platform.runpod_port}/graphql, fake Lambda Cloud "
            f"at http://{host}:{platform.lambda_port}/api/v1"
        )
    return os.environ | {
        "PRISM_CONFIG": str(path),
        "PRISM_API_URL": platform.api_url,
        "PRISM_API_KEY": user["api_key"],
        "PRISM_WS_URL": platform.ws_url,
    }


@dev.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--aws-port",
    default=4566,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="port of the moto server standing in for AWS",
)
@click.option(
    "--ws-port",
    default=8001,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="the node WebSocket API",
)
@click.option(
    "--management-port",
    default=8002,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="the WebSocket management API",
)
@click.option(
    "--tick",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.5),
    help="seconds between scheduled runs: every schedule (sweep, reaper, metering) each tick",
)
@click.option(
    "--node/--no-node",
    default=True,
    show_default=True,
    help="also run a node agent on this machine",
)
@click.option(
    "--demo",
    is_flag=True,
    help="then deploy the bundled model through the CLI, call it, and stop it",
)
@click.option(
    "--fake-clouds",
    is_flag=True,
    help="run fake RunPod and Lambda Cloud servers: --target runpod|lambda works offline",
)
@click.option("--runpod-port", default=8003, show_default=True, type=click.IntRange(1, 65535))
@click.option("--lambda-port", default=8004, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--fake-hub",
    is_flag=True,
    help="run a fake Hugging Face Hub holding hf://prism/tiny-regressor and a tiny "
    "hf://sentence-transformers/paraphrase-MiniLM-L3-v2 (HF_ENDPOINT is set)",
)
@click.option("--hub-port", default=8005, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="where the platform keeps its state, logs and the local node's (default: .prism)",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="start empty: forget the users, keys, nodes and deployments the state dir kept",
)
@click.option(
    "--fake-price-per-hour",
    type=click.FloatRange(0),
    help="with --fake-clouds: every GPU at this USD/h (watch a budget stop in seconds)",
)
def dev_up(
    host,
    api_port,
    aws_port,
    ws_port,
    management_port,
    tick,
    node,
    demo,
    fake_clouds,
    runpod_port,
    lambda_port,
    fake_price_per_hour,
    fake_hub,
    hub_port,
    state_dir,
    fresh,
):
    """Start moto (AWS), the API and the node WebSocket gateway; create a dev user and write
    the CLI config."""
    platform = LocalPlatform(
        host=host,
        api_port=api_port,
        moto_port=aws_port,
        ws_port=ws_port,
        management_port=management_port,
        tick_seconds=tick,
        fake_clouds=fake_clouds,
        runpod_port=runpod_port,
        lambda_port=lambda_port,
        fake_price_per_hour=fake_price_per_hour,
        fake_hub=fake_hub,
        hub_port=hub_port,
        fresh=fresh,
        **({"state": LocalState(Path(state_dir).resolve())} if state_dir else {}),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        user = platform.start()
    except PlatformError as exc:
        platform.stop()
        raise click.ClickException(str(exc)) from None
    except BaseException:
        platform.stop()
        raise
    try:
        cli_env = _announce(platform, user)
        if node:
            try:
                platform.start_node(user["api_key"], cli_env, say=lambda x: click.echo(f"# {x}"))
            except PlatformError as exc:
                raise click.ClickException(str(exc)) from None
            click.echo("# node agent 'local' online (logs in node.log)")
        if demo:
            if not node:
                raise click.UsageError("--demo needs the local node (drop --no-node)")
            run_demo(cli_env)
        click.echo("# ready", err=False)
        while not stop.wait(0.5):
            try:
                platform.supervise()
            except PlatformError as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        platform.stop()
        click.echo("# stopped", err=True)
