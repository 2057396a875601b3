"""`docker` on a fake Lambda VM (prism/dev/fakes/instances.py): `docker run -d ... IMAGE` of the
node agent image starts the agent as a process, with the run's --env-file and its -v mounts
applied to PRISM_NODE_STATE; any other image is accepted and runs nothing. Other commands fail
as they would without a Docker daemon."""

import argparse
import sys
from pathlib import Path

from prism.dev.fakes.instances import agent_image, spawn_agent


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "run":
        print(f"fake docker: only `docker run` is supported, not {argv[:1]}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog="docker run")
    parser.add_argument("-d", "--detach", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--restart")
    parser.add_argument("--gpus")
    parser.add_argument("--network")
    parser.add_argument("-v", "--volume", action="append", default=[])
    parser.add_argument("-e", "--env", action="append", default=[])
    parser.add_argument("-p", "--publish", action="append", default=[])
    parser.add_argument("--env-file", action="append", default=[])
    parser.add_argument("image")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    run = parser.parse_args(argv[1:])
    if run.image != agent_image():
        print(f"fake docker: {run.image} runs nothing on this fake VM")
        return 0
    env = {}
    for path in run.env_file:
        env |= _env_file(Path(path))
    env |= dict(item.split("=", 1) for item in run.env)
    mounts = dict(reversed(v.split(":", 1)) for v in run.volume)  # container path -> host path
    state = Path(mounts.get(env.get("PRISM_NODE_STATE", ""), env.get("PRISM_NODE_STATE", ".")))
    process = spawn_agent(env, state)
    print(f"{process.pid:064x}")  # a container id
    return 0


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
