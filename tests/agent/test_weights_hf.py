"""hf:// weights through the real huggingface_hub against a fake Hub (HF_ENDPOINT)."""

import signal
import subprocess
import sys
import time

import pytest
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from node_agent.weights import PullError, WeightsCache, fetch
from node_agent.weights.base import PARTS
from prism.dev.fakes.hf_hub import FakeHfHub
from prism.dev.fakes.hf_repos import CHUNK, LFS_THRESHOLD
from tests.e2e.conftest import REPO

FILES = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/vocab.txt": b"a\nb\n",
    "model.safetensors": b"w" * (LFS_THRESHOLD + 10),
}
# An LFS file that goes on past the point kill_mid_file stalls it at.
BIG = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * (12 * 1024 * 1024 // 256)}


@pytest.fixture
def hub(isolated_hf):
    with FakeHfHub() as hub:
        yield hub


@pytest.fixture
def cache(tmp_path):
    return WeightsCache(tmp_path / "cache", max_bytes=1 << 30)


def pull(hub, cache, uri, env=None, progress=None, **kwargs):
    env = {"HF_ENDPOINT": hub.url} | (env or {})
    return fetch(uri, cache, progress or (lambda done, total: None), env=env, **kwargs)


def files_in(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_a_branch_is_pulled_at_its_commit_and_the_commit_is_recorded(hub, cache):
    sha = hub.add_commit("org/model", FILES)
    pulled = pull(hub, cache, "hf://org/model@main")
    assert pulled.revision == sha
    assert files_in(pulled.path) == FILES  # no huggingface_hub metadata left behind


def test_the_same_commit_again_is_a_cache_hit_that_downloads_nothing(hub, cache):
    hub.add_commit("org/model", FILES)
    first = pull(hub, cache, "hf://org/model")
    served = hub.bytes_served
    second = pull(hub, cache, "hf://org/model@main")
    assert second.path == first.path and second.cache_hit
    assert hub.bytes_served == served


def test_a_moved_branch_pulls_the_new_commit_into_a_new_entry(hub, cache):
    hub.add_commit("org/model", FILES)
    first = pull(hub, cache, "hf://org/model")
    new_sha = hub.add_commit("org/model", FILES | {"config.json": b"{}"})
    second = pull(hub, cache, "hf://org/model")
    assert second.revision == new_sha and second.path != first.path
    assert (second.path / "config.json").read_bytes() == b"{}"


def test_tags_commits_and_the_kserve_spelling_pin_a_revision(hub, cache):
    old = hub.add_commit("org/model", FILES, tags=("v1",))
    hub.add_commit("org/model", FILES | {"config.json": b"{}"})
    for uri in ("hf://org/model@v1", f"hf://org/model@{old}", "hf://org/model:v1"):
        pulled = pull(hub, cache, uri)
        assert pulled.revision == old and files_in(pulled.path) == FILES


def test_allow_and_ignore_patterns_choose_the_files(hub, cache):
    hub.add_commit("org/model", FILES)
    only_config = pull(hub, cache, "hf://org/model", allow_patterns=["*.json"])
    no_tokenizer = pull(hub, cache, "hf://org/model", ignore_patterns=["tokenizer/*"])
    assert set(files_in(only_config.path)) == {"config.json"}
    assert set(files_in(no_tokenizer.path)) == {"config.json", "model.safetensors"}


def test_progress_counts_up_to_the_repository_size(hub, cache):
    hub.add_commit("org/model", FILES)
    seen = []
    pull(hub, cache, "hf://org/model", progress=lambda done, total: seen.append((done, total)))
    total = sum(len(v) for v in FILES.values())
    assert seen[-1] == (total, total)


def test_a_private_repository_needs_the_token_from_env_vars(hub, cache):
    hub.add_commit("org/private", FILES, token="hf_secret")
    with pytest.raises(PullError, match="repository not found; if it is private, pass HF_TOKEN"):
        pull(hub, cache, "hf://org/private")
    pulled = pull(hub, cache, "hf://org/private", env={"HF_TOKEN": "hf_secret"})
    assert files_in(pulled.path) == FILES


def test_a_gated_repository_says_to_accept_its_conditions(hub, cache):
    hub.add_commit("org/gated", FILES, gated=True, token="hf_granted")
    with pytest.raises(PullError, match="gated: accept its conditions"):
        pull(hub, cache, "hf://org/gated")
    assert hub.bytes_served == 0
    assert list(cache.entries.iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("hf://org/missing", "repository not found"),
        ("hf://org/model@no-such-branch", "revision not found"),
        ("hf://org/model@" + "0" * 40, "revision not found"),
    ],
)
def test_missing_repositories_and_revisions_fail_with_the_reason(hub, cache, uri, reason):
    hub.add_commit("org/model", FILES)
    with pytest.raises(PullError, match=reason):
        pull(hub, cache, uri)


def test_a_hub_that_answers_500_fails_with_the_status(hub, cache):
    hub.add_commit("org/model", FILES)
    hub.fail_status = 500
    with pytest.raises(PullError, match="HTTP 500|cannot reach"):
        pull(hub, cache, "hf://org/model")


def test_an_unreachable_hub_is_a_pull_error_naming_it(cache, isolated_hf):
    with pytest.raises(PullError, match="cannot reach http://127.0.0.1:9"):
        fetch(
            "hf://org/model",
            cache,
            lambda done, total: None,
            env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        )


def test_a_mirror_never_fills_the_cache_for_the_real_hub(hub, cache):
    """The endpoint is part of the cache key: a lying mirror cannot poison other pulls."""
    hub.add_commit("org/model", FILES)
    with FakeHfHub() as mirror:
        mirror.add_commit("org/model", FILES)  # claims the very same commit sha
        from_mirror = pull(mirror, cache, "hf://org/model")
    from_hub = pull(hub, cache, "hf://org/model")
    assert from_hub.revision == from_mirror.revision
    assert from_hub.path != from_mirror.path and not from_hub.cache_hit


# The agent, run as a process of its own: what `kill -9` stops in the middle of a file.
AGENT_PULL = """
import sys
from pathlib import Path
from node_agent.weights import WeightsCache, fetch
root, uri, endpoint = sys.argv[1:]
fetch(uri, WeightsCache(Path(root), 1 << 30), lambda *_: None, env={"HF_ENDPOINT": endpoint})
"""


def kill_mid_file(hub, cache, name):
    """Start the pull in another process, SIGKILL it once `name` is partly on disk, and return
    that file's part file; the Hub then serves without stalling."""
    # http_get writes what it received every DOWNLOAD_CHUNK_SIZE: stall once one chunk went out.
    hub.stall_seconds, hub.stall_after_bytes = 60, DOWNLOAD_CHUNK_SIZE + CHUNK
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_PULL, str(cache.root), "hf://org/model", hub.url], cwd=REPO
    )
    deadline = time.monotonic() + 30
    try:
        while not (
            (part := next(cache.partial.glob(f"*/{PARTS}/{name}.part"), None))
            and part.stat().st_size
        ):
            assert agent.poll() is None and time.monotonic() < deadline, "no partial download"
            time.sleep(0.05)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    hub.stall_seconds = 0
    return part


def test_a_pull_continues_from_the_bytes_a_killed_agent_left(hub, cache):
    hub.add_commit("org/model", BIG)
    part = kill_mid_file(hub, cache, "model.safetensors")
    kept = part.stat().st_size
    assert 0 < kept < len(BIG["model.safetensors"])
    pulled = pull(hub, cache, "hf://org/model")
    assert files_in(pulled.path) == BIG
    ranges = [r for path, r in hub.range_requests if path.endswith("model.safetensors")]
    assert ranges == [f"bytes={kept}-"]  # from where the killed agent stopped, not from zero


def test_kept_bytes_that_do_not_hash_to_the_file_are_discarded(hub, cache):
    hub.add_commit("org/model", BIG)
    part = kill_mid_file(hub, cache, "model.safetensors")
    part.write_bytes(b"x" * part.stat().st_size)  # e.g. a disk that lost what it was given
    with pytest.raises(PullError, match="does not match the size and hash the Hub lists"):
        pull(hub, cache, "hf://org/model")
    assert not part.exists()
    assert files_in(pull(hub, cache, "hf://org/model").path) == BIG
