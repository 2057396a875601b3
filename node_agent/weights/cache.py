"""The node's weights cache, shared by every deployment on it and content-addressed: an entry is
named by the digest of what its source really is (Resolved.key), so the same weights are
downloaded once, however many deployments use them.

Layout under the root:
  entries/<digest>/       complete weights, never written again
  entries/<digest>.json   the key, size and revision; its mtime is the entry's last use
  partial/<digest>/       a download in progress (or interrupted: the next pull resumes it)
  locks/<digest>.lock     flock held while the entry is checked, filled or evicted

A download fills partial/<digest> and is renamed into entries/ only when the source says it is
complete (sizes and hashes verified), so a partial download is never visible as complete. The
lock is an flock, so two pulls of one source, in threads or in processes, download it once.
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node_agent.weights.base import (
    Progress,
    PullError,
    Resolved,
    Source,
    human_bytes,
    tree_size,
)

DISK_RESERVE_BYTES = 256 * 1024 * 1024  # never fill the disk to the last byte
RECENT_USE_S = 300.0  # an entry used this recently is never evicted (its deployment is starting)


@dataclass(frozen=True)
class Pulled:
    path: Path
    revision: str | None = None
    cache_hit: bool = False


class WeightsCache:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        in_use: Callable[[], set[Path]] = set,
    ):
        self.root = root
        self.max_bytes = max_bytes
        self.in_use = in_use  # entry directories live deployments run from
        self.entries, self.partial, self.locks = root / "entries", root / "partial", root / "locks"
        for folder in (self.entries, self.partial, self.locks):
            folder.mkdir(parents=True, exist_ok=True)
        self._empty_trash()  # what an agent killed while deleting left behind

    def get(self, source: Source, resolved: Resolved, progress: Progress) -> Pulled:
        digest = hashlib.sha256(resolved.key.encode()).hexdigest()[:40]
        entry = self.entries / digest
        with self._lock(digest):
            if entry.is_dir():
                self._touch(digest)
                if resolved.size is not None:
                    progress(resolved.size, resolved.size)
                return Pulled(entry, resolved.revision, cache_hit=True)
            partial = self.partial / digest
            partial.mkdir(exist_ok=True)
            self._ensure_room(resolved.size, partial)
            try:
                source.download(partial, progress)
                self._publish(partial, entry, digest, resolved)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise PullError(f"the node's disk is full ({self.root})") from None
                raise PullError(f"cannot write the weights under {self.root}: {exc}") from None
        self.evict()
        return Pulled(entry, resolved.revision)

    def evict(self, needed: int = 0) -> None:
        """Drop least recently used entries (and abandoned partial downloads) that no live
        deployment uses, until the cache plus `needed` bytes fits its cap."""
        candidates = sorted(self._evictable(), key=lambda c: c[0])
        total = self.size()
        for _, digest, path, size in candidates:
            if total + needed <= self.max_bytes:
                break
            if self._remove(digest, path):
                total -= size
        self._empty_trash()  # deleting is slow: done after choosing, outside every lock

    def size(self) -> int:
        entries = sum(self._entry_size(d.name) for d in self.entries.iterdir() if d.is_dir())
        return entries + sum(tree_size(p) for p in self.partial.iterdir())

    # -- internals --------------------------------------------------------------------------

    def _ensure_room(self, size: int | None, partial: Path) -> None:
        if size is None:
            return
        if size > self.max_bytes:
            raise PullError(
                f"the weights are {human_bytes(size)}, more than this node's weights cache may "
                f"hold ({human_bytes(self.max_bytes)}); raise the node's --cache-max-gb"
            )
        needed = max(0, size - tree_size(partial))
        self.evict(needed)
        free = shutil.disk_usage(self.root).free
        if needed + DISK_RESERVE_BYTES > free:
            raise PullError(
                f"not enough disk space: the weights need {human_bytes(needed)} more, "
                f"{human_bytes(free)} is free on {self.root}"
            )

    def _publish(self, partial: Path, entry: Path, digest: str, resolved: Resolved) -> None:
        meta = {"key": resolved.key, "size": tree_size(partial), "revision": resolved.revision}
        sidecar = self.entries / f"{digest}.json"
        tmp = sidecar.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(sidecar)
        partial.rename(entry)  # the moment the entry becomes visible, complete

    def _evictable(self) -> Iterator[tuple[float, str, Path, int]]:
        in_use = {Path(p).resolve() for p in self.in_use()}
        now = time.time()
        for path in list(self.entries.iterdir()) + list(self.partial.iterdir()):
            if not path.is_dir() or path.resolve() in in_use:
                continue
            digest = path.name
            used = self._last_used(digest, path)
            if path.parent == self.entries and now - used < RECENT_USE_S:
                continue
            size = self._entry_size(digest) if path.parent == self.entries else tree_size(path)
            yield used, digest, path, size

    def _remove(self, digest: str, path: Path) -> bool:
        with self._lock(digest, wait=False) as held:
            if not held or not path.is_dir() or self._still_wanted(digest, path):
                return False  # being pulled, just handed out, or used by a deployment
            path.rename(self.root / f"trash-{uuid.uuid4().hex}")  # gone at once for readers
            (self.entries / f"{digest}.json").unlink(missing_ok=True)
        return True

    def _still_wanted(self, digest: str, path: Path) -> bool:
        """Asked again under the entry's lock: a cache hit may have happened since the
        candidates were listed."""
        if path.parent != self.entries:
            return False
        recent = time.time() - self._last_used(digest, path) < RECENT_USE_S
        return recent or path.resolve() in {Path(p).resolve() for p in self.in_use()}

    def _empty_trash(self) -> None:
        for trash in self.root.glob("trash-*"):
            shutil.rmtree(trash, ignore_errors=True)

    def _entry_size(self, digest: str) -> int:
        try:
            return int(json.loads((self.entries / f"{digest}.json").read_text())["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return tree_size(self.entries / digest)

    def _last_used(self, digest: str, path: Path) -> float:
        sidecar = self.entries / f"{digest}.json"
        try:
            return sidecar.stat().st_mtime if path.parent == self.entries else path.stat().st_mtime
        except OSError:
            return 0.0

    def _touch(self, digest: str) -> None:
        sidecar = self.entries / f"{digest}.json"
        if sidecar.exists():
            os.utime(sidecar)

    @contextmanager
    def _lock(self, digest: str, wait: bool = True) -> Iterator[bool]:
        with open(self.locks / f"{digest}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
