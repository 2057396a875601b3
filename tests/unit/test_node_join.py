"""`prism node up --join <token>`: how a machine that was handed a node token (a cloud
instance, a provisioning script) becomes that node without an API key or a prompt."""

import json
import stat

from click.testing import CliRunner

from prism.cli import main
from prism.commands.node import _join

TOKEN = "prismnode_node_0123456789abcdef.s3cr3t"


def test_joining_saves_the_node_the_token_names(tmp_path):
    config = _join(tmp_path, TOKEN, None, "wss://ws.example/api", "gpu-pod")
    saved = json.loads((tmp_path / "node.json").read_text())
    assert saved == {
        "api_url": "",
        "ws_url": "wss://ws.example/api",
        "node_id": "node_0123456789abcdef",
        "token": TOKEN,
        "name": "gpu-pod",
    }
    assert config.node_id == "node_0123456789abcdef"
    assert stat.S_IMODE((tmp_path / "node.json").stat().st_mode) == 0o600


def test_a_newer_token_for_the_node_replaces_the_saved_one(tmp_path):
    _join(tmp_path, TOKEN, None, "wss://ws.example/api", "gpu-pod")
    newer = "prismnode_node_0123456789abcdef.rotated"
    _join(tmp_path, newer, None, "wss://ws.example/api", "gpu-pod")
    assert json.loads((tmp_path / "node.json").read_text())["token"] == newer


def test_something_that_is_not_a_node_token_is_refused_before_anything_runs(tmp_path):
    result = CliRunner().invoke(
        main,
        ["node", "up", "--join", "hunter2", "--ws", "ws://x", "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 2 and "not a node token" in result.output
    assert not (tmp_path / "node.json").exists()


def test_joining_needs_the_websocket_url(tmp_path):
    result = CliRunner().invoke(
        main,
        ["node", "up", "--state-dir", str(tmp_path)],
        env={"PRISM_NODE_TOKEN": TOKEN, "PRISM_WS_URL": ""},
    )
    assert result.exit_code == 2 and "PRISM_WS_URL" in result.output
