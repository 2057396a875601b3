"""The node's weights cache: one download per content, never a half-written entry, LRU eviction
of what no deployment uses, and room checked before pulling."""

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from node_agent.weights import PullError, WeightsCache
from node_agent.weights.base import Resolved


class FileSource:
    """A source whose download writes `size` bytes into one file (and can fail half-way)."""

    def __init__(self, name: str, size: int, *, fail_after: int | None = None, delay_s=0.0):
        self.name, self.size, self.fail_after, self.delay_s = name, size, fail_after, delay_s
        self.downloads = 0
        self.lock = threading.Lock()

    def resolve(self) -> Resolved:
        return Resolved(key=f"test:{self.name}", size=self.size)

    def download(self, into: Path, progress) -> None:
        with self.lock:
            self.downloads += 1
        target = into / self.name
        done = target.stat().st_size if target.exists() else 0
        with open(target, "ab") as out:
            while done < self.size:
                if self.fail_after is not None and done >= self.fail_after:
                    self.fail_after = None  # fail once
                    raise PullError("connection dropped")
                out.write(b"x")
                done += 1
                progress(done, self.size)
                time.sleep(self.delay_s)


def get(cache: WeightsCache, source: FileSource):
    return cache.get(source, source.resolve(), lambda done, total: None)


def age(cache: WeightsCache, path: Path, seconds: float) -> None:
    sidecar = cache.entries / f"{path.name}.json"
    past = time.time() - seconds
    os.utime(sidecar, (past, past))


def test_the_second_pull_of_the_same_content_downloads_nothing(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=10_000)
    source = FileSource("model.bin", 100)
    first, second = get(cache, source), get(cache, source)
    assert first.path == second.path and (first.path / "model.bin").stat().st_size == 100
    assert source.downloads == 1 and second.cache_hit and not first.cache_hit


def test_concurrent_pulls_of_one_source_download_it_once(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=10_000)
    source = FileSource("model.bin", 200, delay_s=0.001)
    results = []
    pull = lambda: results.append(get(cache, source))  # noqa: E731
    threads = [threading.Thread(target=pull) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert source.downloads == 1
    assert {r.path for r in results} == {results[0].path}
    assert (results[0].path / "model.bin").read_bytes() == b"x" * 200


def test_an_interrupted_download_is_never_visible_and_the_next_pull_resumes_it(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=10_000)
    source = FileSource("model.bin", 100, fail_after=60)
    with pytest.raises(PullError):
        get(cache, source)
    assert list(cache.entries.iterdir()) == []
    pulled = get(cache, source)
    assert (pulled.path / "model.bin").stat().st_size == 100
    assert source.downloads == 2


def test_eviction_drops_the_least_recently_used_entry_no_deployment_uses(tmp_path):
    in_use: set[Path] = set()
    cache = WeightsCache(tmp_path, max_bytes=300, in_use=lambda: in_use)
    oldest = get(cache, FileSource("a", 100)).path
    middle = get(cache, FileSource("b", 100)).path
    newest = get(cache, FileSource("c", 100)).path
    age(cache, oldest, 3000), age(cache, middle, 2000), age(cache, newest, 1000)
    in_use.add(oldest)  # a running deployment still uses the oldest
    get(cache, FileSource("d", 100))
    assert oldest.exists() and not middle.exists() and newest.exists()
    assert cache.size() <= 300


def test_entries_used_in_the_last_minutes_are_never_evicted(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=150)
    first = get(cache, FileSource("a", 100)).path
    get(cache, FileSource("b", 100))  # over the cap, but "a" was just handed to a deployment
    assert first.exists()


def test_weights_larger_than_the_cache_cap_fail_with_the_setting_to_change(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=50)
    with pytest.raises(PullError, match="--cache-max-gb"):
        get(cache, FileSource("big", 100))


def test_weights_larger_than_the_free_disk_fail_before_downloading(tmp_path):
    cache = WeightsCache(tmp_path, max_bytes=1 << 62)
    huge = FileSource("huge", os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize + 1)
    with pytest.raises(PullError, match="not enough disk space"):
        get(cache, huge)
    assert huge.downloads == 0


def test_a_full_disk_during_the_download_is_a_pull_error(tmp_path):
    class DiskFull(FileSource):
        def download(self, into, progress):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PullError, match="disk is full"):
        get(WeightsCache(tmp_path, max_bytes=10_000), DiskFull("x", 10))


def test_pulls_from_two_processes_share_one_download(tmp_path):
    """The lock is an flock: a second agent process on the node waits instead of re-downloading."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    marker = tmp_path / "downloads"
    marker.mkdir()

    def pull(index: int) -> None:
        class Counting(FileSource):
            def download(self, into, progress):
                (marker / str(index)).touch()
                super().download(into, progress)

        get(WeightsCache(tmp_path / "cache", max_bytes=10_000), Counting("m", 300, delay_s=0.001))

    processes = [context.Process(target=pull, args=(i,)) for i in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0]
    assert len(list(marker.iterdir())) == 1
