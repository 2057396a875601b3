"""The fault-injecting file server the weights downloader is tested against: each fault does
what it says, seen through `requests` over real loopback HTTP."""

import os
import time

import pytest
import requests

from tests.fakes.file_server import Faults, FileServer

DATA = os.urandom(256 * 1024)


@pytest.fixture
def server():
    with FileServer() as server:
        yield server


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=5)


def test_serves_bytes_with_validators(server):
    url = server.add("/w.bin", DATA)
    response = get(url)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"].startswith('"')
    assert "GMT" in response.headers["Last-Modified"]
    assert server.bytes_served == len(DATA)
    # Only this path: the server's ephemeral port may be one another test's leftover health
    # prober still aims at (a stray GET /health was seen on a loaded 2-core run).
    assert [r for r in server.requests if r[1] == "/w.bin"] == [("GET", "/w.bin", {})]


def test_serves_files_from_disk_and_404s_the_rest(server, tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)
    url = server.add("/dir/w.bin", path)
    assert get(url).content == DATA
    assert get(url + "?sig=abc").content == DATA  # query strings (presigned URLs) are ignored
    assert get(server.url + "/nope").status_code == 404


def test_etag_follows_content(server):
    url = server.add("/w.bin", DATA)
    first = get(url).headers
    server.add("/w.bin", DATA[::-1])
    second = get(url).headers
    assert first["ETag"] != second["ETag"]
    assert first["Last-Modified"] != second["Last-Modified"]


@pytest.mark.parametrize("path_on_disk", [False, True])
def test_range_requests(server, tmp_path, path_on_disk):
    content = DATA
    if path_on_disk:
        content = tmp_path / "w.bin"
        content.write_bytes(DATA)
    url = server.add("/w.bin", content)
    tail = get(url, Range="bytes=1000-")
    assert tail.status_code == 206
    assert tail.content == DATA[1000:]
    assert tail.headers["Content-Range"] == f"bytes 1000-{len(DATA) - 1}/{len(DATA)}"
    middle = get(url, Range="bytes=10-19")
    assert (middle.status_code, middle.content) == (206, DATA[10:20])
    assert get(url, Range="bytes=-5").content == DATA[-5:]
    unsatisfiable = get(url, Range=f"bytes={len(DATA)}-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_if_range(server):
    url = server.add("/w.bin", DATA)
    headers = get(url).headers
    for validator in (headers["ETag"], headers["Last-Modified"]):
        assert get(url, Range="bytes=100-", **{"If-Range": validator}).status_code == 206
    stale = get(url, Range="bytes=100-", **{"If-Range": '"stale"'})
    assert (stale.status_code, stale.content) == (200, DATA)
    assert server.requests[-1][2] == {"Range": "bytes=100-", "If-Range": '"stale"'}


def test_drop_then_resume(server):
    url = server.add("/w.bin", DATA, Faults(drop_after=1000, drop_times=2))
    for _ in range(2):
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
            get(url)
    assert get(url).content == DATA  # budget spent: served normally
    # Dropped offsets count per response, so a Range resume meets the drop again.
    server.set_faults("/w.bin", Faults(drop_after=1000))
    with requests.get(url, headers={"Range": "bytes=5000-"}, stream=True, timeout=5) as r:
        received = b""
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in r.iter_content(100):  # reads that end early lose their bytes
                received += chunk
    assert received == DATA[5000:6000]


def test_stall(server):
    url = server.add("/w.bin", DATA, Faults(stall_after=100, stall_seconds=5))
    # Read timeouts while streaming surface as ConnectionError.
    with (
        pytest.raises(requests.exceptions.ConnectionError),
        requests.get(url, stream=True, timeout=(5, 0.2)) as response,
    ):
        for _ in response.iter_content(64):
            pass
    started = time.monotonic()
    assert get(url).content == DATA  # stall_times=1: the second GET is not held
    assert time.monotonic() - started < 2


def test_declared_length(server):
    longer = server.add("/long.bin", DATA, Faults(declared_length=len(DATA) + 10))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(longer)
    shorter = server.add("/short.bin", DATA, Faults(declared_length=100))
    response = get(shorter)
    assert response.headers["Content-Length"] == "100"
    assert response.content == DATA[:100]


def test_corrupt(server):
    url = server.add("/w.bin", DATA, Faults(corrupt=True))
    body = get(url).content
    assert len(body) == len(DATA)
    assert [i for i in range(len(DATA)) if body[i] != DATA[i]] == [len(DATA) // 2]


def test_ignore_range(server):
    url = server.add("/w.bin", DATA, Faults(ignore_range=True))
    response = get(url, Range="bytes=100-")
    assert (response.status_code, response.content) == (200, DATA)
    assert "Accept-Ranges" not in response.headers


def test_head_and_head_status(server):
    url = server.add("/w.bin", DATA)
    head = requests.head(url, timeout=5)
    assert (head.status_code, head.headers["Content-Length"]) == (200, str(len(DATA)))
    server.set_faults("/w.bin", Faults(head_status=405))
    assert requests.head(url, timeout=5).status_code == 405
    assert get(url).content == DATA


def test_status_and_status_times(server):
    gone = server.add("/gone.bin", DATA, Faults(status=404))
    assert [get(gone).status_code for _ in range(3)] == [404, 404, 404]
    flaky = server.add("/flaky.bin", DATA, Faults(status=503, status_times=2))
    assert [get(flaky).status_code for _ in range(3)] == [503, 503, 200]


def test_without_validators(server):
    url = server.add("/w.bin", DATA, Faults(etag=False, last_modified=False))
    response = get(url, Range="bytes=100-", **{"If-Range": '"anything"'})
    assert response.status_code == 200
    assert "ETag" not in response.headers
    assert "Last-Modified" not in response.headers
