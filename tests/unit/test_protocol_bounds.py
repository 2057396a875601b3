"""The protocol's bounds: fields a newer peer adds are ignored both ways; reports and logs are
cut to fit one API Gateway message, never refused."""

import json

from chalicelib.protocol import (
    MAX_MESSAGE_BYTES,
    STOP_MESSAGE_MAX,
    DeploymentStopped,
    LogsResult,
    fit_report,
    parse_node_message,
    parse_server_message,
)


def test_fields_a_newer_peer_adds_are_ignored_both_ways():
    server = parse_server_message(
        json.dumps(
            {
                "type": "deploy_model",
                "id": "m1",
                "deployment_id": "dep_0123456789abcdef",
                "deploy_config": {"port": 9000, "health_path": "/", "restart": "always"},
                "priority": "high",
            }
        )
    )
    assert server.deploy_config.port == 9000
    node = parse_node_message('{"type": "heartbeat", "id": "h1", "load": 0.5}')
    assert node.type == "heartbeat"


def test_a_report_too_long_keeps_its_first_line_and_its_end():
    text = "the process exited with code 1:\n" + "\n".join(f"{n} " + "y" * 500 for n in range(40))
    cut = fit_report(text)
    assert len(cut) == STOP_MESSAGE_MAX
    assert cut.startswith("the process exited with code 1") and cut.endswith("39 " + "y" * 500)
    stopped = DeploymentStopped(deployment_id="dep_0123456789abcdef", reason="crash", message=text)
    assert stopped.message == cut
    assert fit_report("short") == "short"


def test_logs_keep_the_newest_lines_that_fit_one_message():
    lines = [f"{n} " + "z" * 300 for n in range(10000)]
    result = LogsResult(request_id="r", deployment_id="dep_0123456789abcdef", lines=lines)
    assert len(result.to_json().encode()) < MAX_MESSAGE_BYTES
    assert result.lines[-1] == lines[-1] and result.lines[1] in lines
    cut = int(result.lines[0].split()[1])
    assert cut == len(lines) - (len(result.lines) - 1) > 0
    few = LogsResult(request_id="r", deployment_id="dep_0123456789abcdef", lines=lines[:3])
    assert few.lines == lines[:3]  # nothing cut, no marker
