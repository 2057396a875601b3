"""Pull progress goes to the control plane at most every pull_progress_every_s (5 s), and once
at the end: each report is a Lambda invocation and DynamoDB writes there (issue 17)."""

from types import SimpleNamespace

import node_agent.agent as agent_module
from node_agent.agent import Agent, AgentSettings

DEPLOYMENT = "dep_00000000000000aa"


def test_progress_is_sent_at_most_every_five_seconds_and_at_the_end(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(agent_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    sent = []
    agent = Agent(AgentSettings(node_id="n", state_dir=tmp_path), {}, sent.append)
    report = agent._progress_reporter(DEPLOYMENT)
    for tick in range(24):  # 12 s of a pull, a callback every 0.5 s
        now[0] = 1000.0 + tick / 2
        report(tick * 100, 10_000)
    report(10_000, 10_000)
    assert [m.bytes_done for m in sent] == [0, 1000, 2000, 10_000]
    assert {m.deployment_id for m in sent} == {
        DEPLOYMENT
    } and agent.settings.pull_progress_every_s == 5
