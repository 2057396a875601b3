"""The demo `make up` ends with: a real model deployed through the CLI from its weights path on
the local node, an inference request to its endpoint, its health and cost, and a stop."""

import json
import subprocess
import sys
import time

import click
import requests

from prism.dev.infra import REPO_ROOT

MODEL_DIR = REPO_ROOT / "examples" / "models" / "tiny-regressor"


def _prism(env: dict, *args: str) -> str:
    click.echo(click.style("$ prism " + " ".join(args), bold=True))
    result = subprocess.run(
        [sys.executable, "-m", "prism", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise click.ClickException(f"demo step failed: {result.stderr.strip()}")
    return result.stdout


def run_demo(env: dict) -> None:
    created = json.loads(
        _prism(
            env,
            "deploy",
            "create",
            "--name",
            "demo",
            "--weights",
            str(MODEL_DIR),
            "--gpu",
            "none",
            "--json",
            "--",
            "python3",
            str(MODEL_DIR / "serve.py"),
        )
    )
    deployment_id = created["id"]
    click.echo(f"created {deployment_id}; waiting for it to run ...")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        detail = json.loads(_status(env, deployment_id))
        if detail["status"] in ("running", "failed"):
            break
        time.sleep(0.5)
    if detail["status"] != "running":
        raise click.ClickException(
            f"demo deployment ended {detail['status']}: {detail.get('failure_message')}"
        )
    click.echo(_prism(env, "deploy", "status", deployment_id))
    url = detail["endpoint_url"] + "/predict"
    body = {"inputs": [[1, 2, 3, 4]]}
    # The endpoint key was shown once, at create; the node's proxy checks it.
    auth = f"Authorization: Bearer {created['endpoint_key']}"
    shown = f"$ curl -X POST {url} -H '{auth}' -d '{json.dumps(body)}'"
    click.echo(click.style(shown, bold=True))
    headers = {"Authorization": f"Bearer {created['endpoint_key']}"}
    answer = requests.post(url, json=body, headers=headers, timeout=10)
    click.echo(f"demo: inference {answer.status_code} {answer.text}")
    click.echo(_prism(env, "deploy", "health", deployment_id).strip())
    click.echo(_prism(env, "deploy", "stop", deployment_id).strip())
    deadline = time.monotonic() + 30
    while json.loads(_status(env, deployment_id))["status"] != "stopped":
        if time.monotonic() > deadline:
            raise click.ClickException("the demo deployment did not stop within 30 s")
        time.sleep(0.3)
    click.echo(f"demo: done ({deployment_id} stopped)")


def _status(env: dict, deployment_id: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prism", "deploy", "status", deployment_id, "--json"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout
