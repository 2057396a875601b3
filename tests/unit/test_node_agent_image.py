"""infra/node-agent/Dockerfile builds from files that exist and starts the command the control
plane's bootstrap configures (there is no Docker engine here to build it)."""

import json
import re
from pathlib import Path

from chalicelib.services.node_bootstrap import STATE_DIR

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "node-agent" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_everything_it_copies_is_in_the_repository():
    sources = [args.split()[0] for op, args in instructions() if op == "COPY"]
    assert sources and all((REPO / source).exists() for source in sources)


def test_it_runs_prism_node_up_with_state_where_the_bootstrap_mounts_it():
    ops = dict(instructions())
    assert json.loads(ops["ENTRYPOINT"])[:3] == ["prism", "node", "up"]
    assert f"PRISM_NODE_STATE={STATE_DIR}" in ops["ENV"]
    assert ops["VOLUME"] == STATE_DIR
