"""hf://org/model[@revision] through huggingface_hub: the revision (branch, tag or commit) is
resolved to its commit sha first, so the cache is keyed by exactly what was downloaded and the
deployment records it."""

import errno
import re
import shutil
import threading
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import disable_progress_bars, filter_repo_objects

from chalicelib.weights_uri import HfSource
from node_agent.weights.base import (
    Progress,
    PullError,
    PullSettings,
    Resolved,
    env_value,
    tree_size,
)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_ENDPOINT = "https://huggingface.co"
PROGRESS_EVERY_S = 0.5


class HfWeights:
    def __init__(
        self,
        source: HfSource,
        env: dict[str, str],
        settings: PullSettings,
        allow_patterns: list[str] | None = None,
        ignore_patterns: list[str] | None = None,
    ):
        self.source = source
        self.endpoint = (env_value(env, "HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = env_value(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
        self.allow, self.ignore = allow_patterns, ignore_patterns
        self.settings = settings
        self.sha: str | None = None
        self.size: int | None = None

    def resolve(self) -> Resolved:
        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        with self._errors():
            self.sha = self.source.revision
            if not COMMIT.match(self.sha):
                self.sha = api.repo_info(self.source.repo_id, revision=self.sha).sha
            files = [
                f
                for f in api.list_repo_tree(self.source.repo_id, revision=self.sha, recursive=True)
                if isinstance(f, RepoFile)
            ]
        paths = [f.path for f in files]
        wanted = set(
            filter_repo_objects(paths, allow_patterns=self.allow, ignore_patterns=self.ignore)
        )
        if not wanted:
            raise PullError(f"{self._where()}: no file matches the allow/ignore patterns")
        # The endpoint is part of what the weights are: a mirror that lies about a commit must
        # not fill the cache for deployments pulling from the real Hub.
        key = (
            f"hf:{self.endpoint}|{self.source.repo_id}@{self.sha}"
            f"|allow={self.allow}|ignore={self.ignore}"
        )
        self.size = sum(f.size for f in files if f.path in wanted)
        return Resolved(key=key, size=self.size, revision=self.sha)

    def download(self, into: Path, progress: Progress) -> None:
        disable_progress_bars()
        # huggingface_hub retries a stalled read 5 times, resuming with Range, then fails.
        constants.HF_HUB_DOWNLOAD_TIMEOUT = int(self.settings.stall_timeout_s) or 1
        done = threading.Event()
        watcher = threading.Thread(
            target=_watch, args=(into, progress, self.size, done), daemon=True
        )
        watcher.start()
        try:
            with self._errors():
                snapshot_download(
                    self.source.repo_id,
                    revision=self.sha,
                    local_dir=into,
                    cache_dir=into / ".cache" / "hub",  # never the node user's ~/.cache
                    endpoint=self.endpoint,
                    token=self.token or False,
                    allow_patterns=self.allow,
                    ignore_patterns=self.ignore,
                    etag_timeout=self.settings.connect_timeout_s,
                )
        finally:
            done.set()
            watcher.join()
        shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        progress(tree_size(into), self.size)

    def _where(self) -> str:
        return f"hf://{self.source.repo_id}@{self.source.revision}"

    def _errors(self):
        return _HubErrors(self._where(), self.endpoint, bool(self.token))


class _HubErrors:
    """Turns huggingface_hub's exceptions into a reason the user can act on."""

    def __init__(self, where: str, endpoint: str, has_token: bool):
        self.where, self.endpoint, self.has_token = where, endpoint, has_token

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, PullError):
            return False
        raise self._translate(exc) from None

    def _translate(self, exc: BaseException) -> Exception:
        token_hint = (
            "check that HF_TOKEN can read it"
            if self.has_token
            else "if it is private, pass HF_TOKEN in env_vars"
        )
        if isinstance(exc, GatedRepoError):
            return PullError(
                f"{self.where} is gated: accept its conditions on the Hub with your account "
                f"and pass that account's HF_TOKEN in env_vars"
            )
        if isinstance(exc, RevisionNotFoundError):
            return PullError(f"{self.where}: revision not found (a branch, tag or commit sha)")
        if isinstance(exc, RepositoryNotFoundError):
            return PullError(f"{self.where}: repository not found; {token_hint}")
        if isinstance(exc, EntryNotFoundError):
            return PullError(f"{self.where}: a file of the repository is missing on the Hub")
        if isinstance(exc, LocalEntryNotFoundError):
            return PullError(f"{self.where}: cannot reach {self.endpoint} ({exc.__cause__!r})")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            if status in (401, 403):
                return PullError(f"{self.where}: access refused ({status}); {token_hint}")
            return PullError(f"{self.where}: the Hub answered HTTP {status}")
        if isinstance(exc, httpx2.TimeoutException):
            return PullError(f"{self.where}: the Hub stopped sending bytes (stalled); retry later")
        if isinstance(exc, httpx2.HTTPError):
            return PullError(f"{self.where}: cannot reach {self.endpoint} ({type(exc).__name__})")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc  # the cache reports a full disk
        if isinstance(exc, OSError | ValueError):
            return PullError(f"{self.where}: download failed: {exc}")
        return exc  # a bug: let it surface as one


def _watch(into: Path, progress: Progress, total: int | None, done: threading.Event) -> None:
    """huggingface_hub downloads in threads of its own: measure progress on disk instead."""
    while not done.wait(PROGRESS_EVERY_S):
        progress(min(tree_size(into), total or 1 << 62), total)
