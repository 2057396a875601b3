"""What the fake Hugging Face Hub (hf_hub.py) stores and how it describes it: files with the ids
the Hub derives from their content (git blob sha1, LFS sha256), repos of commits, branches and
tags, and the model info and tree documents of its API."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LFS_THRESHOLD = 1024 * 1024  # files strictly above this size are served as LFS files
CHUNK = 1024 * 1024  # read and write size of file bodies: big writes keep loopback fast


@dataclass(frozen=True)
class Blob:
    """One file's content (in memory or on disk) and the ids the Hub derives from it."""

    size: int
    sha256: str
    oid: str  # git blob sha1: of the content, or of the LFS pointer for LFS files
    data: bytes | None = None
    path: Path | None = None

    @property
    def is_lfs(self) -> bool:
        return self.size > LFS_THRESHOLD

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))


@dataclass
class Repo:
    token: str | None
    gated: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return self.token is not None and not self.gated


def blob_from_bytes(data: bytes) -> Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    lfs = len(data) > LFS_THRESHOLD
    oid = _git_sha1(_lfs_pointer(sha256, len(data)) if lfs else data)
    return Blob(len(data), sha256, oid, data=bytes(data))


def blob_from_path(path: Path) -> Blob:
    """Hash a file by streaming it once: files may be far bigger than memory should hold."""
    size = path.stat().st_size
    small = size <= LFS_THRESHOLD
    h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h256.update(chunk)
            if small:
                h1.update(chunk)
    sha256 = h256.hexdigest()
    oid = h1.hexdigest() if small else _git_sha1(_lfs_pointer(sha256, size))
    return Blob(size, sha256, oid, path=path)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


# -- JSON documents ------------------------------------------------------------------------------


def model_info(repo_id: str, repo: Repo, sha: str, blobs: bool) -> dict[str, Any]:
    files = repo.commits[sha]
    return {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": sha,
        "lastModified": repo.dates[sha],
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": "auto" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [_sibling(name, b, blobs) for name, b in sorted(files.items())],
        "usedStorage": sum(b.size for b in files.values()),
    }


def _sibling(name: str, blob: Blob, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": name}
    entry: dict[str, Any] = {"rfilename": name, "size": blob.size, "blobId": blob.oid}
    if blob.is_lfs:
        entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry


def tree(files: dict[str, Blob], sha: str, prefix: str, recursive: bool) -> list[dict]:
    """Tree entries under `prefix`, directories included, sorted by path as the Hub does."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    entries: dict[str, dict] = {}
    for name, blob in files.items():
        if not name.startswith(base):
            continue
        parts = name[len(base) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder = base + "/".join(parts[:i])
            oid = hashlib.sha1(f"tree\0{sha}\0{folder}".encode()).hexdigest()
            entries[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
        if recursive or len(parts) == 1:
            entries[name] = _tree_file(name, blob)
    return [entries[p] for p in sorted(entries)]


def _tree_file(name: str, blob: Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": name}
    if blob.is_lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry
