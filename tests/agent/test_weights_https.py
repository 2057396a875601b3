"""https:// weights with requests against a real HTTP server that injects faults: resume after a
dropped connection, stalls, wrong lengths, wrong hashes, errors, archives."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from node_agent.weights import PullError, PullSettings, WeightsCache, fetch
from tests.fakes.file_server import Faults, FileServer

BODY = bytes(range(256)) * 4096 * 3  # 3 MiB
FAST = PullSettings(connect_timeout_s=2, stall_timeout_s=0.5, attempts=3, backoff_s=0.01)


@pytest.fixture
def server():
    with FileServer() as server:
        yield server


@pytest.fixture
def cache(tmp_path):
    return WeightsCache(tmp_path / "cache", max_bytes=1 << 30)


def pull(uri, cache, settings=FAST, progress=None):
    return fetch(uri, cache, progress or (lambda done, total: None), settings=settings)


def ranges(server):
    return [headers.get("Range") for method, _, headers in server.requests if method == "GET"]


def test_a_file_is_streamed_to_disk_with_progress(server, cache):
    url = server.add("/m/model.bin", BODY)
    seen = []
    pulled = pull(url, cache, progress=lambda done, total: seen.append((done, total)))
    assert (pulled.path / "model.bin").read_bytes() == BODY
    assert seen[-1] == (len(BODY), len(BODY))


def test_a_dropped_connection_resumes_where_it_stopped(server, cache):
    url = server.add("/model.bin", BODY, Faults(drop_after=1_000_000, drop_times=2))
    pulled = pull(url, cache)
    assert (pulled.path / "model.bin").read_bytes() == BODY
    assert ranges(server)[1:] == ["bytes=1000000-", "bytes=2000000-"]
    assert server.bytes_served == len(BODY)  # nothing downloaded twice


def test_a_stalled_download_is_retried_then_resumed(server, cache):
    url = server.add("/model.bin", BODY, Faults(stall_after=500_000, stall_seconds=3))
    pulled = pull(url, cache)
    assert (pulled.path / "model.bin").read_bytes() == BODY
    assert ranges(server)[-1] == "bytes=500000-"


def test_a_download_that_always_stalls_fails_instead_of_hanging(server, cache):
    url = server.add("/model.bin", BODY, Faults(stall_after=0, stall_seconds=3, stall_times=99))
    with pytest.raises(PullError, match="failed 3 times in a row without progress: no bytes for"):
        pull(url, cache)
    assert list(cache.entries.iterdir()) == []


def test_a_server_that_sends_less_than_it_announced_fails(server, cache):
    url = server.add("/model.bin", BODY, Faults(declared_length=len(BODY) + 100))
    with pytest.raises(PullError, match="without progress"):
        pull(url, cache)


def test_the_sha256_pin_is_verified(server, cache):
    url = server.add("/model.bin", BODY)
    good = hashlib.sha256(BODY).hexdigest()
    pulled = pull(f"{url}#sha256={good}", cache)
    assert (pulled.path / "model.bin").read_bytes() == BODY


def test_a_wrong_hash_is_a_checksum_mismatch_and_nothing_is_kept(server, cache):
    url = server.add("/model.bin", BODY, Faults(corrupt=True))
    expected = hashlib.sha256(BODY).hexdigest()
    with pytest.raises(PullError, match=f"checksum mismatch .* expected sha256 {expected}"):
        pull(f"{url}#sha256={expected}", cache)
    assert list(cache.entries.iterdir()) == []


def test_a_server_that_ignores_range_is_downloaded_again_from_the_start(server, cache):
    url = server.add("/model.bin", BODY, Faults(drop_after=1_000_000, ignore_range=True))
    pulled = pull(url, cache)
    assert (pulled.path / "model.bin").read_bytes() == BODY


def test_content_that_changed_between_attempts_is_not_spliced(server, cache):
    """If-Range: a resumed request for changed content gets the whole new body."""
    url = server.add("/model.bin", BODY, Faults(drop_after=1_000_000))
    newer = BODY[::-1]

    def swap_after_first_attempt(done, total):
        if done >= 1_000_000 and server.requests and len(server.requests) == 2:
            server.add("/model.bin", newer)

    pulled = pull(url, cache, progress=swap_after_first_attempt)
    assert (pulled.path / "model.bin").read_bytes() in (BODY, newer)


def test_transient_5xx_are_retried(server, cache):
    url = server.add("/model.bin", BODY, Faults(status=503, status_times=2))
    assert (pull(url, cache).path / "model.bin").read_bytes() == BODY


def test_a_server_without_head_is_asked_with_get(server, cache):
    url = server.add("/model.bin", BODY, Faults(head_status=405))
    assert (pull(url, cache).path / "model.bin").read_bytes() == BODY


@pytest.mark.parametrize(
    ("status", "reason"),
    [(404, "was not found \\(404\\)"), (403, "refused access \\(403\\)")],
)
def test_not_found_and_refused_fail_at_once_with_the_reason(server, cache, status, reason):
    url = server.add("/model.bin", BODY, Faults(status=status))
    with pytest.raises(PullError, match=reason):
        pull(url, cache)


def test_the_same_url_and_etag_again_is_a_cache_hit_and_new_content_is_not(server, cache):
    url = server.add("/model.bin", BODY)
    first = pull(url, cache)
    served = server.bytes_served
    again = pull(url, cache)
    assert again.path == first.path and again.cache_hit and server.bytes_served == served
    server.add("/model.bin", b"new weights")
    assert (pull(url, cache).path / "model.bin").read_bytes() == b"new weights"


def test_a_server_with_no_etag_or_last_modified_is_never_served_from_cache(server, cache):
    url = server.add("/model.bin", BODY, Faults(etag=False, last_modified=False))
    assert pull(url, cache).path != pull(url, cache).path


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_tar_gz_is_unpacked_and_the_archive_removed(server, cache):
    url = server.add("/model.tar.gz", tar_gz({"model/config.json": b"{}", "model/w.bin": b"w"}))
    pulled = pull(url, cache)
    names = sorted(p.relative_to(pulled.path).as_posix() for p in pulled.path.rglob("*"))
    assert names == ["model", "model/config.json", "model/w.bin"]


def test_a_zip_is_unpacked(server, cache):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("serve.py", "print('hi')")
    pulled = pull(server.add("/m.zip", buffer.getvalue()), cache)
    assert (pulled.path / "serve.py").read_text() == "print('hi')"


def test_an_archive_escaping_its_directory_is_refused(server, cache, tmp_path):
    url = server.add("/evil.tgz", tar_gz({"../../escaped.txt": b"owned"}))
    with pytest.raises(PullError, match="unsafe archive"):
        pull(url, cache)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert list(cache.entries.iterdir()) == []


def test_a_corrupt_archive_is_refused(server, cache):
    url = server.add("/broken.tar.gz", tar_gz({"w.bin": b"w" * 10_000})[:-200])
    with pytest.raises(PullError, match="broken.tar.gz is damaged or truncated"):
        pull(url, cache)


def test_a_signed_urls_query_never_appears_in_the_failure(server, cache):
    url = server.add("/model.bin", BODY, Faults(status=403))
    with pytest.raises(PullError) as failure:
        pull(f"{url}?X-Amz-Signature=secretsignature", cache)
    assert "secretsignature" not in str(failure.value)
    assert "/model.bin?…" in str(failure.value)


def test_an_encoded_slash_in_the_file_name_never_escapes_the_entry(server, cache, tmp_path):
    url = server.add("/x/..%2F..%2F..%2Fescaped.txt", b"owned")
    pulled = pull(url, cache)
    assert (pulled.path / "weights").read_bytes() == b"owned"
    assert not list(tmp_path.rglob("escaped.txt"))
