"""How a cloud instance becomes a node: the env the agent image reads, and the cloud-init user
data a Lambda VM runs (executed here with bash, a sandbox root and a `docker` that records)."""

import os
import stat
import subprocess

import pytest

from chalicelib.services.node_bootstrap import STATE_DIR, AgentBootstrap

TOKEN = "prismnode_node_0123456789abcdef.s3cr3t-t0ken"


def bootstrap(**overrides):
    values = {
        "image": "ghcr.io/prism-deployments/node-agent:0.1.0",
        "token": TOKEN,
        "ws_url": "wss://ws.example/api",
        "api_url": "https://api.example/api",
        "name": "prism-prod-dep_0123456789abcdef",
    }
    return AgentBootstrap(**(values | overrides))


def test_the_env_is_what_prism_node_up_reads():
    assert bootstrap().env() == {
        "PRISM_NODE_TOKEN": TOKEN,
        "PRISM_WS_URL": "wss://ws.example/api",
        "PRISM_API_URL": "https://api.example/api",
        "PRISM_NODE_NAME": "prism-prod-dep_0123456789abcdef",
        "PRISM_NODE_STATE": STATE_DIR,
    }


def test_a_value_that_would_break_the_env_file_is_refused():
    with pytest.raises(ValueError, match="PRISM_WS_URL"):
        bootstrap(ws_url="wss://ws.example\nEVIL=1").env()


def test_cloud_init_starts_the_agent_with_its_token_in_a_root_only_file(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$PRISM_ROOT/docker-args"\n')
    docker.chmod(0o755)
    script = tmp_path / "user-data"
    script.write_text(bootstrap().cloud_init())
    root = tmp_path / "vm"
    root.mkdir()
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PRISM_ROOT": str(root)}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)

    args = (root / "docker-args").read_text().splitlines()
    assert args[:2] == ["run", "-d"] and args[-1] == "ghcr.io/prism-deployments/node-agent:0.1.0"
    assert ["--gpus", "all"] == args[args.index("--gpus") : args.index("--gpus") + 2]
    assert f"{root}{STATE_DIR}:{STATE_DIR}" in args
    assert TOKEN not in " ".join(args)  # never on a command line (ps, docker inspect)
    env_file = root / "etc/prism/node.env"
    assert args[args.index("--env-file") + 1] == str(env_file)
    assert f"PRISM_NODE_TOKEN={TOKEN}" in env_file.read_text().splitlines()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
