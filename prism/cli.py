"""`prism`: deploy create|list|status|stop|health|rotate-key, admin create-key, dev up."""

import json
import sys

import click

from prism.client import ApiError
from prism.commands.admin import admin
from prism.commands.dev import dev
from prism.commands.node import node
from prism.config import api_client
from prism.output import (
    deployment_detail,
    deployments_table,
    emit_json,
    endpoint_key_notice,
    unprotected_warning,
)
from prism.watch import follow

TARGETS = {
    "local": "prism_node",
    "prism_node": "prism_node",
    "runpod": "runpod",
    "lambda": "lambda",
}


class PrismGroup(click.Group):
    """Shows an API error as one clear line and a non-zero exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            status = f" ({exc.status})" if exc.status else ""
            click.secho(f"error{status}: {exc.message}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=PrismGroup)
def main():
    """PRISM Deployments: run ML models as persistent GPU services."""


@main.group()
def deploy():
    """Create, list, inspect and stop deployments."""


def _command(json_command: str | None, trailing: tuple[str, ...]) -> list[str] | None:
    if json_command and trailing:
        raise click.UsageError("give the command either with --command or after --, not both")
    if trailing:
        return list(trailing)
    if json_command is None:
        return None
    try:
        command = json.loads(json_command)
    except ValueError:
        command = None
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise click.BadParameter(
            'must be a JSON array of strings, e.g. \'["python", "serve.py"]\' '
            "(or put the command after --)",
            param_hint="--command",
        )
    return command


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env


def _gpu(gpu: str | None) -> dict:
    if gpu is None:
        return {}
    if gpu.lower() == "none":
        return {"gpu": False}
    if gpu.lower() == "any":
        return {"gpu": True}
    return {"gpu": True, "gpu_type": gpu}


@deploy.command("create", context_settings={"ignore_unknown_options": False})
@click.option("--name", required=True, help="1-63 lowercase letters, digits, hyphens")
@click.option("--image", help="container image (image form)")
@click.option("--weights", help="hf://org/model[@rev], r2://bucket/path, https://… or /path")
@click.option("--resource", help="marketplace resource slug (see `prism marketplace list`)")
@click.option("--target", type=click.Choice(sorted(TARGETS)), help="local means prism_node")
@click.option("--gpu", help="GPU type (A100, RTX4090…), 'any' or 'none'")
@click.option("--budget", type=float, help="stop once this many USD are spent")
@click.option(
    "--port",
    type=int,
    help="port the model serves HTTP on ($PORT, {port}); default: a free port the node "
    "picks (shown in the endpoint), 8000 on cloud targets",
)
@click.option("--health-path", help="health check path, e.g. /health")
@click.option(
    "--restart",
    type=click.Choice(["never", "on-failure", "always"]),
    help="restart policy (default on-failure: up to --max-restarts, with backoff)",
)
@click.option("--max-restarts", type=int, help="restarts in a row under on-failure (default 3)")
@click.option(
    "--unhealthy-timeout",
    type=int,
    help="seconds unhealthy before it counts as a failure and is restarted (default 300, 0: never)",
)
@click.option(
    "--public",
    is_flag=True,
    help="serve the endpoint without a key (default: an endpoint key is required, shown once)",
)
@click.option("--command", "json_command", help='exec array as JSON: \'["python","serve.py"]\'')
@click.option(
    "--framework",
    help="auto (default): the node picks the engine for the kind of model; or name one: vllm, "
    "tgi, tei, llama.cpp, prism-embed (the API lists every value it takes)",
)
@click.option("--env", "env_pairs", multiple=True, help="NAME=VALUE (repeatable)")
@click.option("--allow-http", is_flag=True, help="accept an http:// weights URL")
@click.option("--allow-pattern", multiple=True, help="hf:// only: pull just files matching a glob")
@click.option("--ignore-pattern", multiple=True, help="hf:// only: skip files matching a glob")
@click.option("--wait", is_flag=True, help="follow it (pull progress) until running or failed")
@click.option("--timeout", default=1800.0, show_default=True, help="seconds --wait waits")
@click.option("--idempotency-key", help="retrying with the same key never creates twice")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@click.argument("command_args", nargs=-1, metavar="[-- COMMAND...]")
def deploy_create(
    name,
    image,
    weights,
    resource,
    target,
    gpu,
    budget,
    port,
    health_path,
    restart,
    max_restarts,
    unhealthy_timeout,
    public,
    json_command,
    framework,
    env_pairs,
    allow_http,
    allow_pattern,
    ignore_pattern,
    wait,
    timeout,
    idempotency_key,
    as_json,
    command_args,
):
    """Create a deployment from an image, weights or a marketplace resource."""
    body: dict = {
        "name": name,
        "image": image,
        "weights_source": weights,
        "resource_slug": resource,
        "framework": framework,
        "budget_max_usd": budget,
        "command": _command(json_command, command_args),
    }
    if target:
        body["target"] = TARGETS[target]
    body["deploy_config"] = _deploy_config(
        port=port,
        health_path=health_path,
        weights_allow_patterns=list(allow_pattern) or None,
        weights_ignore_patterns=list(ignore_pattern) or None,
        restart=restart,
        max_restarts=max_restarts,
        unhealthy_timeout_s=unhealthy_timeout,
        auth="public" if public else None,
    )
    if env_pairs:
        body["env_vars"] = _env(env_pairs)
    if allow_http:
        body["allow_insecure_http"] = True
    body |= _gpu(gpu)
    body = {k: v for k, v in body.items() if v is not None}
    client = api_client()
    created = client.create_deployment(body, idempotency_key)
    key = {"endpoint_key": created.get("endpoint_key")}
    if not as_json:
        click.echo(f"created {created['id']} ({created['status']})")
        endpoint_key_notice(created)  # now: --wait may end in an error
    elif unprotected_warning(created):
        click.secho(f"warning: {unprotected_warning(created)}", fg="yellow", err=True)
    if wait:
        if as_json and key["endpoint_key"]:  # shown once: never lost to a --wait that fails
            click.echo(f"endpoint key (shown once): {key['endpoint_key']}", err=True)
        created = _settled(follow(client, created["id"], timeout) | key, as_json)
    emit_json(created) if as_json else deployment_detail(created)


def _deploy_config(**given) -> dict | None:
    """The options given (None: left to the server's defaults), or None when there are none."""
    config = {name: value for name, value in given.items() if value is not None}
    return config or None


@deploy.command("list")
@click.option("--status", help="comma-separated, e.g. running,unhealthy")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--all", "follow", is_flag=True, help="follow next_token through every page")
@click.option("--json", "as_json", is_flag=True)
def deploy_list(status, limit, follow, as_json):
    """List your deployments, newest first."""
    client = api_client()
    statuses = [s.strip() for s in status.split(",")] if status else None
    page = client.list_deployments(statuses, limit)
    items = list(page["items"])
    while follow and page.get("next_token"):
        page = client.list_deployments(statuses, limit, page["next_token"])
        items.extend(page["items"])
    if as_json:
        emit_json({"items": items, "next_token": None if follow else page.get("next_token")})
        return
    deployments_table(items)
    if page.get("next_token") and not follow:
        click.echo("more deployments: use --all, or --json for next_token", err=True)


@deploy.command("status")
@click.argument("deployment_id")
@click.option("--watch", is_flag=True, help="follow it (pull progress) until running or over")
@click.option("--timeout", default=1800.0, show_default=True, help="seconds --watch waits")
@click.option("--json", "as_json", is_flag=True)
def deploy_status(deployment_id, watch, timeout, as_json):
    """Show one deployment."""
    client = api_client()
    detail = client.get_deployment(deployment_id)
    if watch:
        detail = follow(client, deployment_id, timeout)
    emit_json(detail) if as_json else deployment_detail(detail)


def _settled(detail: dict, as_json: bool) -> dict:
    """Waiting ends in failure: say why, with a non-zero exit (after the detail)."""
    if detail["status"] != "failed":
        return detail
    emit_json(detail) if as_json else deployment_detail(detail)
    raise click.ClickException(f"{detail['failure_reason']}: {detail['failure_message']}")


@deploy.command("rotate-key")
@click.argument("deployment_id")
@click.option("--json", "as_json", is_flag=True)
def deploy_rotate_key(deployment_id, as_json):
    """Replace a deployment's endpoint key: the new one is shown once, the old one stops
    working."""
    rotated = api_client().rotate_endpoint_key(deployment_id)
    if as_json:
        emit_json(rotated)
        return
    click.echo(
        f"new endpoint key for {rotated['deployment_id']} (shown once): {rotated['endpoint_key']}"
    )
    if rotated["delivered"]:
        click.echo("the old key no longer works")
    else:
        click.echo(
            "its node is not connected now: the new key takes effect, and the old one stops "
            "working, as soon as it connects",
            err=True,
        )


@deploy.command("stop")
@click.argument("deployment_id")
@click.option("--json", "as_json", is_flag=True)
def deploy_stop(deployment_id, as_json):
    """Stop a deployment (safe to repeat)."""
    detail = api_client().stop_deployment(deployment_id)
    if as_json:
        emit_json(detail)
    else:
        click.echo(f"{detail['id']}: {detail['status']}")


@deploy.command("health")
@click.argument("deployment_id")
@click.option("--json", "as_json", is_flag=True)
def deploy_health(deployment_id, as_json):
    """Show a deployment's health."""
    health = api_client().deployment_health(deployment_id)
    if as_json:
        emit_json(health)
        return
    state = {True: "healthy", False: "unhealthy", None: "not probed yet"}[health["healthy"]]
    stale = " (last known)" if health["stale"] else ""
    click.echo(
        f"{health['deployment_id']}: {health['status']}, {state}{stale}, "
        f"{health['consecutive_failures']} consecutive failures"
    )


@deploy.command("logs")
@click.argument("deployment_id")
@click.option("--tail", default=100, show_default=True, type=click.IntRange(1, 5000))
def deploy_logs(deployment_id, tail):
    """Show the last lines a deployment's model printed (fetched from its node)."""
    for line in api_client().deployment_logs(deployment_id, tail)["lines"]:
        click.echo(line)


@deploy.command("costs")
@click.argument("deployment_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True)
def deploy_costs(deployment_id, limit, as_json):
    """The charges metered for a deployment, newest first."""
    ledger = api_client().deployment_costs(deployment_id, limit)
    if as_json:
        emit_json(ledger)
        return
    click.echo(f"{ledger['deployment_id']}: ${ledger['cost_accrued_usd']:,.6f} in all")
    for entry in ledger["items"]:
        click.echo(
            f"  {entry['period_start'][:19]} -> {entry['period_end'][:19]}  "
            f"${entry['amount_usd']:,.6f} at ${entry['price_per_hour_usd']}/h"
        )


@main.group()
def marketplace():
    """Browse ready-made deployment recipes."""


@marketplace.command("list")
@click.option("--json", "as_json", is_flag=True)
def marketplace_list(as_json):
    """List marketplace resources."""
    resources = api_client().list_resources()["items"]
    if as_json:
        emit_json(resources)
        return
    for r in resources:
        click.echo(f"{r['slug']:<20} {r['title']}")


main.add_command(admin)
main.add_command(dev)
main.add_command(node)
