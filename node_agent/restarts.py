"""The restart policy, pure: after a deployment's process exited (or stayed unhealthy too
long), restart it — and after how long — or give up.

    never       never restart: the exit ends the deployment (failed/crash)
    on-failure  restart a failure (a non-zero or unknown exit code, or unhealthy too long) up to
                max_restarts times in a row, waiting 1, 2, 4, ... s; a clean exit (code 0) ends it
    always      restart every exit, without limit, with the same backoff

The count in a row starts again once the deployment has been healthy for RESET_AFTER_S, so a
model that crashes once a day is restarted every day, and one that crashes at every start is
not restarted for ever.
"""

from dataclasses import dataclass

RESET_AFTER_S = 600.0  # healthy this long: earlier restarts no longer count against the limit
BACKOFF_CAP_S = 60.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float = 0.0
    why: str = ""  # why not, for the report when it gives up


def decide(
    policy: str,
    max_restarts: int,
    in_a_row: int,
    exit_code: int | None,
    backoff_s: float = 1.0,
) -> Decision:
    """`in_a_row`: restarts since the deployment was last healthy for RESET_AFTER_S."""
    if policy == "never":
        return Decision(False, why="its restart policy is never")
    if policy == "on-failure":
        if exit_code == 0:
            return Decision(False, why="it exited cleanly (code 0) and its policy is on-failure")
        if in_a_row >= max_restarts:
            return Decision(False, why=f"it failed again after {in_a_row} restarts in a row")
    return Decision(True, delay_s=min(backoff_s * 2**in_a_row, BACKOFF_CAP_S))


def restarts_in_a_row(in_a_row: int, healthy_since: float | None, now: float) -> int:
    """The count the next decision starts from: none once it has been healthy long enough."""
    if healthy_since is not None and now - healthy_since >= RESET_AFTER_S:
        return 0
    return in_a_row
