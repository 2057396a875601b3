"""hf://org/model[@revision] through huggingface_hub: the revision (branch, tag or commit) is
resolved to its commit sha first, so the cache is keyed by exactly what was downloaded and the
deployment records it.

Each file is downloaded with the library's `http_get` into a part file of a stable name, resumed
with Range from the bytes already there, checked against the size the Hub lists (and its hash,
when bytes were kept from an earlier process), then renamed into place. `snapshot_download` is
not used: it writes to a temporary name unique to its process (huggingface_hub#4228), so a pull
the agent was killed in would start again from zero.
"""

import errno
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub._local_folder import get_local_download_paths
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, disable_progress_bars, filter_repo_objects
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from chalicelib.weights_uri import HfSource
from node_agent.weights.base import (
    PARTS,
    Progress,
    PullError,
    PullSettings,
    Resolved,
    env_value,
    part_file,
    tree_size,
)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_ENDPOINT = "https://huggingface.co"
PROGRESS_EVERY_S = 0.5
PARALLEL_FILES = 8  # as snapshot_download


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
        self._files: list[RepoFile] = []

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
        self._files = [f for f in files if f.path in wanted]
        if not wanted:
            raise PullError(f"{self._where()}: no file matches the allow/ignore patterns")
        # The endpoint is part of what the weights are: a mirror that lies about a commit must
        # not fill the cache for deployments pulling from the real Hub.
        key = (
            f"hf:{self.endpoint}|{self.source.repo_id}@{self.sha}"
            f"|allow={self.allow}|ignore={self.ignore}"
        )
        self.size = sum(f.size for f in self._files)
        return Resolved(key=key, size=self.size, revision=self.sha)

    def download(self, into: Path, progress: Progress) -> None:
        disable_progress_bars()
        # http_get retries a stalled read 5 times, resuming with Range, then fails.
        constants.HF_HUB_DOWNLOAD_TIMEOUT = int(self.settings.stall_timeout_s) or 1
        done = threading.Event()
        watcher = threading.Thread(
            target=_watch, args=(into, progress, self.size, done), daemon=True
        )
        watcher.start()
        pool = ThreadPoolExecutor(PARALLEL_FILES)
        try:
            with self._errors():
                for future in [pool.submit(self._fetch, f, into) for f in self._files]:
                    future.result()
        finally:  # the first failure stops the files not started yet
            pool.shutdown(wait=True, cancel_futures=True)
            done.set()
            watcher.join()
        # The emptied part folders, and the one get_local_download_paths makes.
        for scratch in (PARTS, ".cache"):
            shutil.rmtree(into / scratch, ignore_errors=True)
        progress(tree_size(into), self.size)

    def _fetch(self, file: RepoFile, into: Path) -> None:
        # The library's own check that a file name cannot escape `into` (.., absolute paths).
        target = get_local_download_paths(into, file.path).file_path
        if target.is_file() and target.stat().st_size == file.size:
            return  # finished by an earlier, interrupted pull
        part = part_file(into, file.path)
        url = hf_hub_url(self.source.repo_id, file.path, revision=self.sha, endpoint=self.endpoint)
        with open(part, "ab") as out:
            if out.tell() > file.size:  # longer than the file: not a prefix of it
                out.truncate(0)
                out.seek(0)
            kept = out.tell()  # the bytes an earlier, killed agent wrote
            http_get(
                url,
                out,
                resume_size=kept,
                headers=build_hf_headers(token=self.token or False),
                expected_size=file.size,
                displayed_filename=file.path,
            )
        self._verify(file, part, kept > 0)
        part.replace(target)

    def _verify(self, file: RepoFile, part: Path, resumed: bool) -> None:
        """Bytes kept across processes must still add up to the file the Hub lists. A file
        downloaded in one go is only checked for its size, as huggingface_hub does: hashing it
        again would cost a third of the download's time."""
        if part.stat().st_size != file.size:
            matches = False
        elif not resumed:
            matches = True
        elif file.lfs is not None:
            with open(part, "rb") as data:
                matches = sha_fileobj(data).hex() == file.lfs.sha256
        else:  # a small file kept in git: its id is the git hash of its content
            matches = git_hash(part.read_bytes()) == file.blob_id
        if not matches:
            part.unlink()
            raise PullError(
                f"{self._where()}: {file.path} does not match the size and hash the Hub lists; "
                "its partial download was discarded, retry"
            )

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
