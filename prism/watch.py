"""Following a deployment until it settles, with a progress bar while its weights are pulled."""

import time

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from prism.output import console

SETTLED = frozenset({"running", "unhealthy", "failed", "stopped"})


def follow(client, deployment_id: str, timeout_s: float, every_s: float = 1.0) -> dict:
    """Poll until the deployment is running or over; returns its last detail."""
    deadline = time.monotonic() + timeout_s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("", total=None)
        while True:
            detail = client.get_deployment(deployment_id)
            bar.update(task, **_view(detail))
            if detail["status"] in SETTLED:
                return detail
            if time.monotonic() >= deadline:
                raise click.ClickException(
                    f"{deployment_id} is still {detail['status']} after {timeout_s:g} s "
                    "(it keeps going; `prism deploy status --watch` follows it again)"
                )
            time.sleep(every_s)


def _view(detail: dict) -> dict:
    note = f" - {detail['status_message']}" if detail.get("status_message") else ""
    view = {"description": f"{detail['name']}: {detail['status']}{note}"}
    if detail["status"] == "pulling" and detail.get("bytes_done") is not None:
        view |= {"completed": detail["bytes_done"], "total": detail.get("bytes_total")}
    return view
