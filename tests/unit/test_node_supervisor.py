"""The local node agent under `prism dev up` comes back after it dies, with a backoff that
doubles while it keeps dying and resets once it has stayed up."""

from prism.dev.node_supervisor import FIRST_DELAY, MAX_DELAY, STABLE_AFTER, NodeSupervisor


class Agent:
    def __init__(self):
        self.returncode = None
        self.pid = 4242

    def poll(self):
        return self.returncode


def test_a_dead_agent_is_restarted_after_a_backoff_that_doubles_and_resets():
    now = [0.0]
    started, said = [], []

    def spawn():
        started.append(Agent())
        return started[-1]

    supervisor = NodeSupervisor(spawn, said.append, clock=lambda: now[0])
    delays = []
    for _ in range(7):  # keeps dying at once
        supervisor.process.returncode = -9
        supervisor.check()
        begun = now[0]
        while len(started) == len(delays) + 1:
            now[0] += 0.25
            supervisor.check()
        delays.append(now[0] - begun)
    assert delays == [FIRST_DELAY, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY]
    assert supervisor.restarts == 7 and "code -9" in said[0]
    now[0] += STABLE_AFTER + 1  # stayed up a while: the next death is retried quickly again
    supervisor.check()
    supervisor.process.returncode = 1
    supervisor.check()
    now[0] += FIRST_DELAY
    supervisor.check()
    assert len(started) == 9
