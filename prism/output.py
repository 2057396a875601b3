"""How the CLI shows things: rich tables for people, --json for scripts."""

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Piped output keeps whole IDs instead of squeezing columns into 80 characters.
console = Console(width=None if sys.stdout.isatty() else 200)
STATUS_STYLE = {
    "running": "green",
    "unhealthy": "yellow",
    "failed": "red",
    "stopped": "dim",
    "stopping": "magenta",
    "provisioning": "cyan",
    "pulling": "cyan",
    "starting": "cyan",
}


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _usd(value) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _pulled(d: dict) -> str:
    done, total = d.get("bytes_done"), d.get("bytes_total")
    if done is None:
        return "-"
    if total:
        return f"{_size(done)} of {_size(total)} ({100 * done / total:.0f}%)"
    return _size(done)


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"


def _engine(d: dict) -> str:
    """What serves it and why (the node's choice when no command was given)."""
    if not d.get("engine"):
        return "-"
    return escape(f"{d['engine']}: {d['engine_reason']}" if d.get("engine_reason") else d["engine"])


def _port(config: dict) -> str:
    return str(config["port"]) if config.get("port") else "any free (the node picks)"


def _restart_policy(config: dict) -> str:
    policy = config.get("restart")
    if policy is None:  # a control plane older than restart policies
        return "-"
    limit = f", up to {config['max_restarts']}" if policy == "on-failure" else ""
    timeout = config.get("unhealthy_timeout_s")
    unhealthy = f"; unhealthy {timeout} s counts as a failure" if timeout else ""
    return f"{policy}{limit}{unhealthy}"


def _restart_rows(d: dict, output_lines: int = 10) -> list[tuple[str, str]]:
    """The policy, how often the node agent restarted it, and why it last did."""
    rows = [
        ("restart", _restart_policy(d["deploy_config"])),
        ("restarts", str(d.get("restarts") or 0)),
    ]
    last = d.get("last_exit")
    if last:
        code = "" if last["exit_code"] is None else f", exit code {last['exit_code']}"
        rows.append(("last exit", f"{last['cause']}{code} at {last['at'][:19]}"))
    if last and last.get("message"):  # the end of what the model printed before it
        rows.append(
            ("last output", escape("\n".join(last["message"].splitlines()[-output_lines:])))
        )
    return rows


ENDPOINT_AUTH = {
    "key": "endpoint key required (Authorization: Bearer <key>)",
    "public": "public: anyone who reaches the endpoint",
    "none": "[yellow]none[/]: the image serves the endpoint itself, unprotected",
}


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _request_rows(d: dict) -> list[tuple[str, str]]:
    """What the endpoint proxy last reported: requests, error rate, latency, in flight."""
    m = d.get("request_metrics")
    if not m:
        return [("requests", "-")]
    total = m["requests_total"]
    classes = ", ".join(f"{c}xx {m[f'status_{c}xx']:,}" for c in (2, 3, 4, 5))
    error_rate = f"{100 * m['status_5xx'] / total:.1f}% (5xx)" if total else "-"
    latency = " · ".join(f"p{q} {_ms(m[f'latency_p{q}_ms'])}" for q in (50, 95, 99))
    if m["latency_p50_ms"] is not None:  # the last window in which the model answered
        latency += f" (over {m['window_s']:g} s)"
    return [
        ("requests", f"{total:,} ({classes}; {m['unauthorized']:,} without a valid key)"),
        ("error rate", error_rate),
        ("latency", latency),
        ("in flight", str(m["in_flight"])),
        ("reported", m["reported_at"][:19]),
    ]


def unprotected_warning(d: dict) -> str | None:
    if d.get("endpoint_auth") != "none":
        return None
    return (
        f"the endpoint of this image deployment on {d['target']} is not protected: anyone "
        "with the URL can use it; deploy weights + command to have the agent's proxy check "
        "a key"
    )


def endpoint_key_notice(created: dict) -> None:
    """After a create: the endpoint key, shown this once, or why there is none."""
    key, auth = created.get("endpoint_key"), created.get("endpoint_auth")
    if key:
        click.echo(f"endpoint key (shown once, only its hash is kept): {key}")
        click.echo("  send it as: Authorization: Bearer <endpoint key>")
    elif auth == "key":
        click.echo(
            "no endpoint key in this reply: the first create with this idempotency key got it "
            f"(it is shown once); `prism deploy rotate-key {created['id']}` makes a new one",
            err=True,
        )
    elif auth == "public":
        click.echo("the endpoint is public (no key): anyone who reaches it can use it", err=True)
    warning = unprotected_warning(created)
    if warning:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def deployments_table(items: list[dict]) -> None:
    table = Table(
        "ID", "NAME", "TARGET", "STATUS", "RESTARTS", "COST", "BUDGET", "ENDPOINT", "CREATED"
    )
    for d in items:
        table.add_row(
            d["id"],
            d["name"],
            d["target"],
            _status(d["status"]),
            str(d.get("restarts") or 0),
            _usd(d["cost_accrued_usd"]),
            _usd(d["budget_max_usd"]),
            d["endpoint_url"] or "-",
            d["created_at"][:19],
        )
    console.print(table)


def deployment_detail(d: dict) -> None:
    what = d["image"] or d["weights_source"] or "-"
    rows = [
        ("id", d["id"]),
        ("name", d["name"]),
        ("status", _status(d["status"])),
        ("target", d["target"]),
        ("source", what),
        ("revision", d.get("weights_revision") or "-"),
        ("pulled", _pulled(d)),
        ("resource", d["resource_slug"] or "-"),
        ("command", " ".join(d["command"]) or "-"),
        ("framework", d.get("framework") or "-"),
        ("engine", _engine(d)),
        ("gpu", (d["gpu_type"] or "any") if d["gpu"] else "none"),
        ("port", _port(d["deploy_config"])),
        ("health path", d["deploy_config"]["health_path"]),
        *_restart_rows(d),
        ("env vars", ", ".join(d["env_var_names"]) or "-"),
        ("endpoint", d["endpoint_url"] or "-"),
        ("endpoint auth", ENDPOINT_AUTH.get(d.get("endpoint_auth"), "-")),
        *_request_rows(d),
        ("node", d.get("node_id") or "-"),
        ("note", escape(d.get("status_message") or "-")),
        ("cost", _usd(d["cost_accrued_usd"])),
        ("budget", _usd(d["budget_max_usd"])),
        ("price/hour", _usd(d["price_per_hour_usd"])),
        (
            "budget left",
            _usd(d.get("budget_remaining_usd"))
            + (
                f" (~{_duration(d['budget_seconds_left'])} at this price)"
                if d.get("budget_seconds_left") is not None
                else ""
            ),
        ),
        ("created", d["created_at"]),
        ("updated", d["updated_at"]),
    ]
    if d.get("failure_reason"):
        rows.append(
            ("failure", f"[red]{d['failure_reason']}[/]: {escape(d['failure_message'] or '')}")
        )
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


def nodes_table(items: list[dict]) -> None:
    table = Table("ID", "NAME", "STATUS", "GPUS", "LAST SEEN")
    for n in items:
        gpus = ", ".join(g["name"] for g in n["gpus"]) or "none"
        style = "green" if n["status"] == "online" else "dim"
        table.add_row(
            n["id"], n["name"], f"[{style}]{n['status']}[/]", gpus, n["last_seen_at"][:19]
        )
    console.print(table)
