"""What every weights source shares: the error a user sees, progress, and the two steps a source
takes (resolve what it really is, then download it into an empty directory)."""

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)

MiB = 1024 * 1024
PARTS = ".parts"  # under a download directory: the files still arriving (see part_file)


class PullError(Exception):
    """The weights could not be fetched; the message says what to fix."""


@dataclass(frozen=True)
class PullSettings:
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 30.0  # no byte for this long: the attempt is dropped and retried
    attempts: int = 5  # attempts in a row without progress before giving up
    backoff_s: float = 1.0  # first retry delay; doubles, capped at 30 s
    max_unpacked_bytes: int = 1 << 40  # an archive may not unpack to more than this


@dataclass(frozen=True)
class Resolved:
    """What a source is right now. `key` names its content exactly (a commit sha, ETags, a
    sha256): equal keys mean equal bytes, so the cache may serve one for the other."""

    key: str
    size: int | None = None  # bytes to transfer, when the source says
    revision: str | None = None  # e.g. the commit sha an hf:// branch resolved to


class Source(Protocol):
    def resolve(self) -> Resolved: ...

    def download(self, into: Path, progress: Progress) -> None:
        """Fill `into` (empty, or holding this source's own partial download) completely."""


class ByteCounter:
    """Thread-safe byte total for sources that download in parallel."""

    def __init__(self, progress: Progress, total: int | None, start: int = 0):
        self._progress, self._total, self.done = progress, total, start
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            self._progress(self.done, self._total)


def part_file(into: Path, relative: str) -> Path:
    """Where the file `relative` of a download gathers its bytes until it is complete: a name that
    outlives the agent, so a pull a killed agent started continues from them."""
    path = into / PARTS / f"{relative}.part"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def env_value(env: dict[str, str], *names: str) -> str | None:
    """The first of `names` set in the deployment's env_vars (which win) or the agent's own."""
    for name in names:
        if env.get(name):
            return env[name]
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def tree_size(path: Path) -> int:
    """Bytes in the files under `path` (0 when it is gone)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
