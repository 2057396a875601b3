"""What `make up` runs: the whole platform with a local node agent, ending with a real model
deployed through the CLI, called, and stopped; Ctrl-C then leaves no process and no port."""

from pathlib import Path

import pytest

from tests.e2e.conftest import alive, descendants, port_in_use, start_platform, stop_platform

pytestmark = pytest.mark.e2e


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_text()
        except OSError:
            continue
        if any(needle in text for needle in needles):
            found.append(text.replace("\0", " "))
    return found


def test_dev_up_with_the_demo_serves_a_real_model_and_cleans_up(tmp_path):
    platform = start_platform(tmp_path, tick=1, args=("--demo",))
    try:
        check_demo_and_shutdown(platform)
    finally:
        if platform.process.poll() is None:
            stop_platform(platform)


def check_demo_and_shutdown(platform):
    output = "\n".join(platform.output)
    assert "demo: inference 200" in output and '"outputs": [7.1' in output
    assert "healthy" in output and "demo: done" in output
    assert "$ prism deploy create --name demo --weights" in output
    assert f"# console at {platform.api_url}/console" in output
    state_dir = str(platform.state_dir / "node")
    ports = (platform.api_port, platform.aws_port, platform.ws_port, platform.management_port)
    markers = [f"--rest-port\0{platform.api_port}\0", f"-p\0{platform.aws_port}\0", state_dir]
    # Lambda with the REST API, moto and the node agent
    assert len(_processes_mentioning(*markers)) == 3
    started = descendants(platform.process.pid)  # every process it runs, models included
    assert stop_platform(platform) == 0
    assert _processes_mentioning(*markers) == []
    assert [pid for pid in started if alive(pid)] == []
    assert not any(port_in_use(port) for port in ports)
