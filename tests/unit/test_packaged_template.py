"""`make package`'s template: chalice package merged with infra/resources.json, and cfn-lint
accepts it with no error (for both stages)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism.dev.infra import merged_template

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_packaged_template_passes_cfn_lint(tmp_path, stage):
    env = os.environ | {"AWS_DEFAULT_REGION": "us-east-1"}
    merge = tmp_path / "merge.json"
    merge.write_text(json.dumps(merged_template()))
    subprocess.run(
        [
            str(BIN / "chalice"),
            "package",
            "--stage",
            stage,
            "--merge-template",
            str(merge),
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    template = tmp_path / "out" / "sam.json"
    lint = subprocess.run(
        [str(BIN / "cfn-lint"), str(template)], capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    resources = json.loads(template.read_text())["Resources"]
    assert resources["DeploymentsTable"]["Properties"]["TableName"] == {
        "Fn::Sub": "prism-${Stage}-deployments"
    }
    events = resources["MeterWorker"]["Properties"]["Events"]["MeterWorkerSqsEventSource"]
    assert events["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert f"prism-{stage}-metering" in json.dumps(events["Properties"]["Queue"])
    machine = resources["ProvisionStateMachine"]["Properties"]
    assert machine["DefinitionSubstitutions"]["CloudLaunchArn"] == {
        "Fn::GetAtt": ["CloudLaunch", "Arn"]
    }
    assert "CloudLaunch" in resources  # the step is a function of the packaged app
    api_env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert (
        "stateMachine:prism-${Stage}-teardown"
        in api_env["PRISM_TEARDOWN_STATE_MACHINE_ARN"]["Fn::Sub"]
    )
    for ends_deployments in ("WebsocketMessage", "SweepNodes", "CheckCloudHealth"):
        variables = resources[ends_deployments]["Properties"]["Environment"]["Variables"]
        assert "PRISM_TEARDOWN_STATE_MACHINE_ARN" in variables, ends_deployments
    launch_env = resources["CloudLaunch"]["Properties"]["Environment"]["Variables"]
    assert launch_env["PRISM_PUBLIC_WS_URL"]["Fn::Sub"].startswith("wss://${WebsocketAPI}.")
    assert launch_env["PRISM_PUBLIC_API_URL"]["Fn::Sub"].startswith("https://${RestAPI}.")
    assert not _dependency_cycles(resources)
    management = resources["SweepNodes"]["Properties"]["Environment"]["Variables"]
    assert "${WebsocketAPI}" in management["PRISM_WS_MANAGEMENT_URL"]["Fn::Sub"]


def _dependency_cycles(resources: dict) -> list[str]:
    """CloudFormation refuses Ref/GetAtt cycles (cfn-lint does not catch them all)."""

    def refs(node) -> set[str]:
        if isinstance(node, dict):
            found = set()
            if "Ref" in node and node["Ref"] in resources:
                found.add(node["Ref"])
            if "Fn::GetAtt" in node and node["Fn::GetAtt"][0] in resources:
                found.add(node["Fn::GetAtt"][0])
            for value in node.values():
                found |= refs(value)
            return found
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node)) if node else set()
        return set()

    def depends_on(body) -> set[str]:
        value = body.get("DependsOn", [])
        return {value} if isinstance(value, str) else set(value)

    graph = {name: refs(body) | depends_on(body) for name, body in resources.items()}
    cycles, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycles.append(" -> ".join([*path, name]))
            return
        state[name] = "active"
        for dependency in graph.get(name, ()):
            visit(dependency, [*path, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])
    return cycles
