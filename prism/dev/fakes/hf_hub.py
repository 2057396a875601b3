"""A fake Hugging Face Hub: a real HTTP server speaking the protocol huggingface_hub downloads with.

It keeps model repos (commits, branches, tags) in memory and answers the four routes that
`snapshot_download` / `hf_hub_download` / `HfApi.repo_info` use, with the headers and error codes
of the real Hub, so code under test drives the real library over real HTTP:

    with FakeHfHub() as hub:
        sha = hub.add_commit("org/model", {"config.json": b"{}", "model.bin": Path("big.bin")})
        snapshot_download("org/model", local_dir=tmp, endpoint=hub.url)

Routes (models only; revisions are a branch, a tag or a full 40-hex commit):
    GET  /api/models/{repo}[/revision/{rev}]     -> model info JSON (`sha`, `siblings`, ...)
    GET  /api/models/{repo}/tree/{rev}[/{path}]  -> tree entries, paged by `Link: <...>; rel="next"`
    HEAD /{repo}/resolve/{rev}/{file}             -> X-Repo-Commit, ETag, X-Linked-Etag/-Size
    GET  /{repo}/resolve/{rev}/{file}             -> bytes; `Range: bytes=a-b` answered with 206

Files above 1 MiB are LFS files (ETag = sha256, tree entry carries `lfs`), smaller ones are git
blobs (ETag = git blob sha1). No xet headers are ever sent, so the library uses plain HTTP.

Errors, as the Hub answers them (`X-Error-Code` is what huggingface_hub maps to exceptions):
    missing or private repo, no token     401 RepoNotFound
    missing or private repo, other token  404 RepoNotFound   (a valid token without access)
    gated repo on /resolve, no token      401 GatedRepo      (info and tree stay public)
    gated repo on /resolve, other token   403 GatedRepo
    unknown revision                      404 RevisionNotFound
    unknown file                          404 EntryNotFound  (with X-Repo-Commit)

Test hooks: `requests`, `range_requests`, `bytes_served`, and the faults `stall_seconds` (after
`stall_after_bytes`, by default after the first chunk),
`drop_after_bytes` / `drop_times` and `fail_status`.

This module holds the repos and their lookups; files, repos and the API's documents are in
prism/dev/fakes/hf_repos.py, the HTTP handler in prism/dev/fakes/hf_hub_http.py.
"""

import hashlib
import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path

from prism.dev.fakes.hf_hub_http import HubError, HubHandler, HubServer
from prism.dev.fakes.hf_repos import Repo, blob_from_bytes, blob_from_path
from prism.dev.fakes.http_server import serve_in_background

_HEX40 = frozenset("0123456789abcdef")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeHfHub:
    """In-memory Hub on 127.0.0.1; see the module docstring for what it answers."""

    def __init__(self, *, page_size: int = 50, port: int = 0):
        self.page_size = page_size
        self._port = port
        self.url: str | None = None
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query), in order
        self.range_requests: list[tuple[str, str]] = []  # (path, Range header) of resolve GETs
        self.bytes_served = 0
        self.stall_seconds = 0.0
        self.stall_after_bytes = 0  # a body stalls once this many of its bytes went out
        self.drop_after_bytes: int | None = None
        self.drop_times = 1
        self.fail_status: int | None = None
        self._drops_done = 0
        self._repos: dict[str, Repo] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server: HubServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeHfHub":
        self._server = HubServer(("127.0.0.1", self._port), HubHandler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = serve_in_background(self._server, poll_interval=0.05)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()  # keep-alive handlers would otherwise linger
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeHfHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        gated: bool = False,
        token: str | None = None,
    ) -> str:
        """Commit `files` (the whole tree at that commit) on `branch`; move branch and tags to it.

        `token`: the only token that may see the repo (private), or, with `gated=True`, the only
        one that may download from it. A repo's token/gated are fixed by its first commit.
        """
        blobs = {
            name: blob_from_path(Path(v)) if isinstance(v, Path) else blob_from_bytes(v)
            for name, v in files.items()
        }
        with self._lock:
            repo = self._repos.setdefault(
                repo_id, Repo(token=token, gated=gated, created_at=_now())
            )
            if (repo.token, repo.gated) != (token, gated):
                raise ValueError(f"{repo_id}: token/gated differ from the repo's first commit")
            parent = repo.branches.get(branch, "")
            seed = f"{repo_id}\0{branch}\0{parent}\0{next(self._counter)}\0"
            seed += "".join(f"{name}\0{b.oid}\0" for name, b in sorted(blobs.items()))
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha], repo.dates[sha] = blobs, _now()
            repo.branches[branch] = sha
            repo.tags.update(dict.fromkeys(tags, sha))
        return sha

    # -- lookups, raising the Hub's errors ---------------------------------------------------

    def _visible_repo(self, repo_id: str, token: str | None) -> Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and token != repo.token):
            # The Hub hides private repos behind "not found"; anonymous callers get a 401.
            raise HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _check_gate(self, repo_id: str, repo: Repo, token: str | None) -> None:
        if not repo.gated or token == repo.token:
            return
        if token is None:
            raise HubError(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
        raise HubError(
            403,
            "GatedRepo",
            f"Access to model {repo_id} is restricted and you are not in the authorized list.",
        )

    @staticmethod
    def _commit(repo: Repo, rev: str) -> str:
        sha = repo.branches.get(rev) or repo.tags.get(rev)
        if sha is None and len(rev) == 40 and set(rev) <= _HEX40 and rev in repo.commits:
            sha = rev
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def resolve_revision(
        self, repo_id: str, rev: str, token: str | None, gate: bool
    ) -> tuple[Repo, str]:
        """The repo and the commit `rev` names, as `token` may see them (`gate`: and download)."""
        with self._lock:
            repo = self._visible_repo(repo_id, token)
            if gate:
                self._check_gate(repo_id, repo, token)
            return repo, self._commit(repo, rev)

    # -- accounting, called by the handler ---------------------------------------------------

    def record_request(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path))
            if range_header is not None:
                self.range_requests.append((path, range_header))

    def count_served(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def take_drop(self, body_len: int) -> int | None:
        """Byte count after which this body is cut, for the first `drop_times` cuttable bodies."""
        with self._lock:
            limit = self.drop_after_bytes
            if limit is None or body_len <= limit or self._drops_done >= self.drop_times:
                return None
            self._drops_done += 1
            return limit
