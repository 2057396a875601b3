"""r2:// and s3:// weights through boto3 against moto's S3 server (real HTTP, real SigV4)."""

import json
import signal
import subprocess
import sys
import time
import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

from node_agent.weights import PullError, PullSettings, WeightsCache, fetch
from node_agent.weights.base import PARTS
from node_agent.weights.r2 import PART, _client
from tests.e2e.conftest import REPO, free_port

MiB = 1024 * 1024
CREDENTIALS = {"R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3_url():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_url):
    name = f"weights-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return s3, name


@pytest.fixture
def cache(tmp_path):
    return WeightsCache(tmp_path / "cache", max_bytes=1 << 30)


def r2_env(s3_url):
    return {"R2_ENDPOINT_URL": s3_url} | CREDENTIALS


def pull(uri, cache, env, progress=None):
    return fetch(uri, cache, progress or (lambda done, total: None), env=env)


def test_a_prefix_downloads_the_whole_tree(s3_url, bucket, cache):
    s3, name = bucket
    objects = {"models/m/config.json": b"{}", "models/m/shards/1.bin": b"1" * 1000}
    for key, body in objects.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    s3.put_object(Bucket=name, Key="models/other.bin", Body=b"not under the prefix")
    pulled = pull(f"r2://{name}/models/m", cache, r2_env(s3_url))
    assert (pulled.path / "config.json").read_bytes() == b"{}"
    assert (pulled.path / "shards" / "1.bin").read_bytes() == b"1" * 1000
    assert not (pulled.path / "other.bin").exists()


def test_a_large_object_arrives_intact_in_parallel_parts(s3_url, bucket, cache):
    s3, name = bucket
    body = bytes(range(256)) * (40 * MiB // 256)  # above the 16 MiB multipart threshold
    s3.put_object(Bucket=name, Key="big/model.bin", Body=body)
    seen = []
    pulled = pull(
        f"r2://{name}/big/model.bin",
        cache,
        r2_env(s3_url),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (pulled.path / "model.bin").read_bytes() == body
    assert seen[-1] == (len(body), len(body))


def test_the_same_objects_again_are_a_cache_hit_and_a_changed_object_is_not(s3_url, bucket, cache):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="m/w.bin", Body=b"v1")
    first = pull(f"r2://{name}/m", cache, r2_env(s3_url))
    again = pull(f"r2://{name}/m", cache, r2_env(s3_url))
    assert again.path == first.path and again.cache_hit
    s3.put_object(Bucket=name, Key="m/w.bin", Body=b"v2")  # new ETag
    changed = pull(f"r2://{name}/m", cache, r2_env(s3_url))
    assert changed.path != first.path and (changed.path / "w.bin").read_bytes() == b"v2"


def test_s3_uris_use_the_standard_aws_settings(s3_url, bucket, cache):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="w.bin", Body=b"s3")
    env = {"AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    assert (pull(f"s3://{name}/w.bin", cache, env).path / "w.bin").read_bytes() == b"s3"


@pytest.mark.parametrize(
    ("key", "reason"),
    [("missing/prefix", "no object or prefix of that name"), ("", "no object or prefix")],
)
def test_nothing_at_the_key_is_not_found(s3_url, bucket, cache, key, reason):
    _, name = bucket
    with pytest.raises(PullError, match=reason):
        pull(f"r2://{name}/{key}", cache, r2_env(s3_url))


def test_a_missing_bucket_is_not_found(s3_url, cache):
    with pytest.raises(PullError, match="was not found \\(NoSuchBucket\\)"):
        pull("r2://no-such-bucket/m", cache, r2_env(s3_url))


def test_r2_without_an_account_or_endpoint_says_what_to_set(cache, monkeypatch):
    monkeypatch.delenv("R2_ACCOUNT_ID", raising=False)
    monkeypatch.delenv("R2_ENDPOINT_URL", raising=False)
    with pytest.raises(PullError, match="R2_ACCOUNT_ID"):
        pull("r2://bucket/m", cache, CREDENTIALS)


def test_the_account_id_makes_the_cloudflare_endpoint():
    client = _client("r2", {"R2_ACCOUNT_ID": "abc123"} | CREDENTIALS, PullSettings())
    assert client.meta.endpoint_url == "https://abc123.r2.cloudflarestorage.com"
    assert client.meta.region_name == "auto"


def test_an_object_key_that_would_escape_the_weights_directory_is_refused(s3_url, bucket, cache):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="m/../../etc/cron.d/x", Body=b"evil")
    with pytest.raises(PullError, match="cannot be stored safely"):
        pull(f"r2://{name}/m", cache, r2_env(s3_url))


# The agent, run as a process of its own, on a connection that hangs after the first part: what
# `kill -9` stops in the middle of an object.
AGENT_PULL = """
import json, sys, threading
from pathlib import Path
from node_agent.weights import PullSettings, WeightsCache, fetch
from node_agent.weights.r2 import _client
root, uri, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def hang(params, **_):
    if not params["Range"].startswith("bytes=0-"):
        threading.Event().wait()

_client("r2", env, PullSettings()).meta.events.register("provide-client-params.s3.GetObject", hang)
fetch(uri, WeightsCache(Path(root), 1 << 30), lambda *_: None, env=env)
"""


@pytest.fixture
def ranges(s3_url):
    """The Range of every GetObject this process sends."""
    seen = []

    def record(params, **_):
        seen.append(params["Range"])

    events = _client("r2", r2_env(s3_url), PullSettings()).meta.events
    events.register("provide-client-params.s3.GetObject", record)
    yield seen
    events.unregister("provide-client-params.s3.GetObject", record)


def test_a_pull_continues_from_the_parts_a_killed_agent_left(s3_url, bucket, cache, ranges):
    s3, name = bucket
    body = bytes(range(256)) * (3 * PART // 256)
    s3.put_object(Bucket=name, Key="m/model.bin", Body=body)
    uri = f"r2://{name}/m"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_PULL, str(cache.root), uri, json.dumps(r2_env(s3_url))],
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    try:
        while not (
            (part := next(cache.partial.glob(f"*/{PARTS}/model.bin.part"), None))
            and part.stat().st_size == PART
        ):
            assert agent.poll() is None and time.monotonic() < deadline, "no partial download"
            time.sleep(0.05)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    pulled = pull(uri, cache, r2_env(s3_url))
    assert (pulled.path / "model.bin").read_bytes() == body
    # From where the killed agent stopped, not from zero.
    rest = [f"bytes={PART}-{2 * PART - 1}", f"bytes={2 * PART}-{3 * PART - 1}"]
    assert sorted(ranges) == sorted(rest)
