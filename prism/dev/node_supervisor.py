"""The local node agent under `prism dev up`: restarted with backoff when it dies, however it
died (kill -9 included), while the rest of the platform keeps running. The agent keeps its state
on disk, so the new one re-adopts the models the old one started."""

import subprocess
import time
from collections.abc import Callable

FIRST_DELAY, MAX_DELAY = 1.0, 30.0  # seconds before a restart, doubling while it keeps dying
STABLE_AFTER = 60.0  # up this long, and the next death restarts after FIRST_DELAY again


class NodeSupervisor:
    def __init__(
        self,
        spawn: Callable[[], subprocess.Popen],
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._spawn = spawn
        self._say = say
        self._clock = clock
        self._delay = FIRST_DELAY
        self._restart_at: float | None = None
        self.process = spawn()
        self._started = clock()
        self.restarts = 0

    def check(self) -> None:
        """Call often: notices a dead agent, and starts a new one when its backoff is over."""
        now = self._clock()
        if self._restart_at is None:
            if self.process.poll() is None:
                if now - self._started > STABLE_AFTER:
                    self._delay = FIRST_DELAY
                return
            self._say(
                f"the node agent exited (code {self.process.returncode}); restarting it in "
                f"{self._delay:.0f} s (its models keep running and are re-adopted)"
            )
            self._restart_at = now + self._delay
            self._delay = min(self._delay * 2, MAX_DELAY)
        elif now >= self._restart_at:
            self.process = self._spawn()
            self._started, self._restart_at = now, None
            self.restarts += 1
            self._say(f"the node agent was restarted (pid {self.process.pid})")
