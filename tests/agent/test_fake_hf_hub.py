"""The real huggingface_hub library against the fake Hub (prism/dev/fakes/hf_hub.py): downloads,
errors and faults."""

import hashlib
import os
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from prism.dev.fakes.hf_hub import FakeHfHub
from prism.dev.fakes.hf_repos import LFS_THRESHOLD

MiB = 1024 * 1024
FILES = {
    "config.json": b'{"hidden_size": 8}',
    "sub/dir/x.bin": b"x" * 100,
    "model.safetensors": os.urandom(LFS_THRESHOLD + 1),  # above the threshold: an LFS file
}


@pytest.fixture(autouse=True)
def _isolated(isolated_hf):
    """Every test here runs with the library kept off ~/.cache/huggingface."""


@pytest.fixture
def hub():
    with FakeHfHub() as hub:
        yield hub


def download(hub: FakeHfHub, repo_id: str, dest: Path, *, token=False, **kwargs) -> Path:
    """snapshot_download into `dest`; token=False so nothing but the given token is ever sent."""
    path = huggingface_hub.snapshot_download(
        repo_id,
        local_dir=dest,
        cache_dir=dest.parent / "cache",
        endpoint=hub.url,
        token=token,
        **kwargs,
    )
    return Path(path)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by repo path, without the library's own .cache/ metadata."""
    files = (p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def resolve_gets(hub: FakeHfHub) -> list[str]:
    return [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]


# -- downloads -----------------------------------------------------------------------------------


def test_branch_download_is_byte_identical(hub, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MiB))  # served from disk
    hub.add_commit("org/model", {**FILES, "weights/big.bin": big})

    got = tree(download(hub, "org/model", tmp_path / "out", revision="main"))

    assert got == {**FILES, "weights/big.bin": big.read_bytes()}


@pytest.mark.parametrize("pin", ["tag", "commit"])
def test_tag_and_commit_pin_an_older_commit(hub, tmp_path, pin):
    old = hub.add_commit("org/model", {"a.txt": b"v1"}, tags=("v1",))
    hub.add_commit("org/model", {"a.txt": b"v2", "b.txt": b"new"})  # main moves on

    got = tree(download(hub, "org/model", tmp_path / "out", revision="v1" if pin == "tag" else old))

    assert got == {"a.txt": b"v1"}
    if pin == "commit":  # a commit needs no resolving: the library skips repo_info
        assert not [p for _, p in hub.requests if "/revision/" in p]


def test_allow_and_ignore_patterns(hub, tmp_path):
    hub.add_commit("org/model", {"a.json": b"1", "b.json": b"2", "w/x.bin": b"3"})

    allowed = download(hub, "org/model", tmp_path / "allow", allow_patterns=["*.json"])
    ignored = download(hub, "org/model", tmp_path / "ignore", ignore_patterns=["b.*"])

    assert set(tree(allowed)) == {"a.json", "b.json"}
    assert set(tree(ignored)) == {"a.json", "w/x.bin"}


def test_tree_listing_is_paginated(tmp_path):
    files = {f"shard/{i:02}.bin": bytes([i]) * 10 for i in range(10)}
    with FakeHfHub(page_size=4) as hub:
        hub.add_commit("org/model", files)

        got = tree(download(hub, "org/model", tmp_path / "out"))

        tree_calls = [p for _, p in hub.requests if "/tree/" in p]
    assert got == files
    assert len(tree_calls) == 3  # 11 entries (10 files + the "shard" directory) in pages of 4
    assert "recursive=true" in tree_calls[0] and "cursor=" in tree_calls[1]


def test_repo_info_returns_the_commit_sha(hub):
    sha = hub.add_commit("org/model", FILES, branch="dev")

    info = HfApi(endpoint=hub.url, token=False).repo_info("org/model", revision="dev")

    assert info.sha == sha
    assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)


def test_file_metadata_carries_git_and_lfs_etags(hub):
    sha = hub.add_commit("org/model", FILES)

    def meta(name):
        url = hf_hub_url("org/model", name, endpoint=hub.url)
        return get_hf_file_metadata(url, token=False)

    small, big = meta("config.json"), meta("model.safetensors")
    body = FILES["config.json"]
    assert small.etag == hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
    assert big.etag == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert (small.size, big.size) == (len(body), LFS_THRESHOLD + 1)
    assert small.commit_hash == big.commit_hash == sha


def test_bytes_served_counts_bodies_and_an_up_to_date_copy_downloads_nothing(hub, tmp_path):
    hub.add_commit("org/model", FILES)
    download(hub, "org/model", tmp_path / "out")
    assert hub.bytes_served == sum(len(b) for b in FILES.values())
    assert len(resolve_gets(hub)) == len(FILES)

    download(hub, "org/model", tmp_path / "out")  # same local_dir, same commit

    assert hub.bytes_served == sum(len(b) for b in FILES.values())
    assert len(resolve_gets(hub)) == len(FILES)


# -- errors, as snapshot_download surfaces them --------------------------------------------------


def test_missing_repo_raises_repository_not_found(hub, tmp_path):
    with pytest.raises(RepositoryNotFoundError) as err:
        download(hub, "org/nope", tmp_path / "out")
    assert err.value.response.status_code == 401


@pytest.mark.parametrize("revision", ["no-such-branch", "0" * 40])
def test_missing_revision_raises_revision_not_found(hub, tmp_path, revision):
    hub.add_commit("org/model", FILES)

    with pytest.raises(RevisionNotFoundError):
        download(hub, "org/model", tmp_path / "out", revision=revision)


@pytest.mark.parametrize(("token", "status"), [(False, 401), ("hf_wrong", 404)])
def test_private_repo_hides_behind_not_found(hub, tmp_path, token, status):
    hub.add_commit("org/private", FILES, token="hf_secret")

    with pytest.raises(RepositoryNotFoundError) as err:
        download(hub, "org/private", tmp_path / "out", token=token)

    assert err.type is RepositoryNotFoundError  # not its GatedRepoError subclass
    assert err.value.response.status_code == status


def test_private_repo_downloads_with_its_token(hub, tmp_path):
    hub.add_commit("org/private", FILES, token="hf_secret")

    assert tree(download(hub, "org/private", tmp_path / "out", token="hf_secret")) == FILES


@pytest.mark.parametrize(("token", "status"), [(False, 401), ("hf_wrong", 403)])
def test_gated_repo_lists_files_but_refuses_downloads(hub, tmp_path, token, status):
    hub.add_commit("org/gated", FILES, gated=True, token="hf_granted")

    with pytest.raises(GatedRepoError) as err:
        download(hub, "org/gated", tmp_path / "out", token=token)

    assert err.value.response.status_code == status
    assert any("/tree/" in p for _, p in hub.requests)  # info and tree stay public
    assert hub.bytes_served == 0


def test_gated_repo_downloads_with_granted_token(hub, tmp_path):
    hub.add_commit("org/gated", FILES, gated=True, token="hf_granted")

    assert tree(download(hub, "org/gated", tmp_path / "out", token="hf_granted")) == FILES


def test_missing_file_raises_entry_not_found(hub, tmp_path):
    hub.add_commit("org/model", FILES)

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            "org/model", "nope.bin", local_dir=tmp_path / "out", endpoint=hub.url, token=False
        )


def test_fail_status_is_swallowed_by_snapshot_download(hub, tmp_path):
    hub.add_commit("org/model", FILES)
    hub.fail_status = 500

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token=False).repo_info("org/model")
    assert err.value.response.status_code == 500
    # snapshot_download treats Hub errors as "offline" and, with nothing on disk, says so.
    with pytest.raises(LocalEntryNotFoundError):
        download(hub, "org/model", tmp_path / "out")


# -- faults --------------------------------------------------------------------------------------


def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path):
    data = os.urandom(12 * MiB)
    hub.add_commit("org/model", {"w.bin": data})
    # The library only keeps whole DOWNLOAD_CHUNK_SIZE (10 MiB) chunks: drop past the first one.
    hub.drop_after_bytes = 11 * MiB

    got = tree(download(hub, "org/model", tmp_path / "out"))

    assert got == {"w.bin": data}
    assert [r for _, r in hub.range_requests] == [f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]
    assert hub.bytes_served == 11 * MiB + (len(data) - constants.DOWNLOAD_CHUNK_SIZE)


def test_stall_delays_the_body_but_the_download_completes(hub, tmp_path):
    data = os.urandom(2 * MiB)
    hub.add_commit("org/model", {"w.bin": data})
    hub.stall_seconds = 0.3

    start = time.monotonic()
    got = tree(download(hub, "org/model", tmp_path / "out"))

    assert time.monotonic() - start >= 0.3
    assert got == {"w.bin": data}
