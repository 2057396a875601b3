"""A deployment's statuses with when each began, kept on its item (`status_history`) as compact
strings ("running 1764504000123": the status and unix milliseconds), oldest first. Written with
each transition in the same update, so it costs no call; read back as (status, when) pairs."""

from datetime import UTC, datetime

# The first status and the newest ones: a deployment that flaps between running and unhealthy
# keeps a bounded item (20 entries, ~460 bytes at most).
STATUS_HISTORY_MAX = 20


def status_history_after(history: list[str] | None, status: str, at: datetime) -> list[str]:
    """`history` with `status` beginning `at` appended, bounded to STATUS_HISTORY_MAX."""
    entries = [*(history or []), f"{status} {round(at.timestamp() * 1000)}"]
    if len(entries) > STATUS_HISTORY_MAX:
        entries = entries[:1] + entries[1 - STATUS_HISTORY_MAX :]
    return entries


def status_changes(history: list[str] | None) -> list[tuple[str, datetime]]:
    """(status, when it began) for each entry, oldest first."""
    changes = []
    for entry in history or []:
        status, millis = entry.split(" ")
        changes.append((status, datetime.fromtimestamp(int(millis) / 1000, tz=UTC)))
    return changes
