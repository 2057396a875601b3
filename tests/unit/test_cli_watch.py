"""`prism deploy create --wait` / `status --watch`: a progress bar while pulling, then the end."""

import io

import click
import pytest
from rich.console import Console

from prism import watch


class Deployments:
    """Answers get_deployment with the next of a scripted series of details."""

    def __init__(self, *steps):
        self.steps = list(steps)

    def get_deployment(self, deployment_id):
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]


def detail(status, done=None, total=None, note=None):
    return {
        "name": "m",
        "status": status,
        "bytes_done": done,
        "bytes_total": total,
        "status_message": note,
    }


@pytest.fixture
def screen(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    monkeypatch.setattr(watch, "console", console)
    return out


def test_pull_progress_is_drawn_as_bytes_of_the_total(screen):
    client = Deployments(
        detail("pulling", 256_000_000, 1_024_000_000),
        detail("pulling", 512_000_000, 1_024_000_000),
        detail("running", 1, 1),
    )
    final = watch.follow(client, "dep_1", timeout_s=5, every_s=0.15)
    assert final["status"] == "running"
    assert "m: pulling" in screen.getvalue()
    assert "0.5/1.0 GB" in screen.getvalue()


def test_waiting_gives_up_after_the_timeout_saying_how_to_follow_again(screen):
    client = Deployments(detail("provisioning", note="waiting for a node"))
    with pytest.raises(click.ClickException, match="status --watch"):
        watch.follow(client, "dep_1", timeout_s=0, every_s=0)


def test_the_description_carries_the_status_message():
    view = watch._view(detail("provisioning", note="no online node"))
    assert view == {"description": "m: provisioning - no online node"}
