"""https:// weights: streamed to disk, resumed with Range after a dropped or stalled connection,
retried with backoff, optionally pinned by sha256, and unpacked when it is one archive."""

import errno
import hashlib
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from chalicelib.weights_uri import UrlSource
from node_agent.weights.archive import ArchiveError, archive_kind, unpack
from node_agent.weights.base import MiB, Progress, PullError, PullSettings, Resolved

log = logging.getLogger("prism.node.weights")
CHUNK = 4 * MiB


class _Retry(Exception):
    """This attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


@dataclass(frozen=True)
class _Head:
    validator: str | None  # strong ETag or Last-Modified: for If-Range and the cache key
    size: int | None


class HttpsWeights:
    def __init__(self, source: UrlSource, settings: PullSettings):
        self.source = source
        self.settings = settings
        self.name = _file_name(source.url)
        self.shown = _without_query(source.url)
        self.session = requests.Session()
        self._head: _Head | None = None

    def resolve(self) -> Resolved:
        self._head = self._probe()
        if self.source.sha256:  # the content itself is pinned: any URL serving it will do
            key = f"sha256:{self.source.sha256}:{self.name}"
        elif self._head.validator:
            key = f"url:{self.shown}|{self._head.validator}|{self._head.size}"
        else:  # nothing says whether the content changed: never reuse it
            key = f"url:{self.shown}|unvalidated:{time.time_ns()}"
        return Resolved(key=key, size=self._head.size)

    def download(self, into: Path, progress: Progress) -> None:
        if not archive_kind(self.name):
            self._download_file(into / self.name, progress)
            return
        staging = into / ".download"
        staging.mkdir(exist_ok=True)
        self._download_file(staging / self.name, progress)
        for leftover in into.iterdir():  # what an interrupted earlier unpack left
            if leftover == staging:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        self._unpack(staging, into)

    # -- the transfer -----------------------------------------------------------------------

    def _download_file(self, target: Path, progress: Progress) -> None:
        failures, best = 0, _size(target)
        while True:
            try:
                self._attempt(target, progress)
                break
            except _Retry as retry:
                size = _size(target)
                # Only bytes never had before count as progress: a server that sends the same
                # prefix again and again must still run out of attempts.
                failures = 0 if size > best else failures + 1
                best = max(best, size)
                if failures >= self.settings.attempts:
                    raise PullError(
                        f"download of {self.shown} failed {failures} times in a row "
                        f"without progress: {retry}"
                    ) from None
                wait = retry.wait_s or self._backoff(failures)
                log.warning("%s: %s; retrying in %.1f s", self.shown, retry, wait)
                time.sleep(wait)
        self._verify(target)

    def _attempt(self, target: Path, progress: Progress) -> None:
        done = _size(target)
        validator = self._head.validator if self._head else None
        headers = {"Accept-Encoding": "identity"}
        if done and validator:
            headers |= {"Range": f"bytes={done}-", "If-Range": validator}
        elif done:
            done = 0  # nothing to prove the bytes on disk still match: start over
        try:
            with self.session.get(
                self.source.url,
                headers=headers,
                stream=True,
                timeout=(self.settings.connect_timeout_s, self.settings.stall_timeout_s),
            ) as response:
                if response.status_code == 416 and done:
                    return self._finished_already(target, done)
                self._check_status(response)
                if response.headers.get("Content-Encoding", "identity") != "identity":
                    raise PullError(
                        f"{self.shown} was sent compressed ({response.headers['Content-Encoding']})"
                        " although the agent asked for the bytes as they are; serve it without "
                        "Content-Encoding"
                    )
                if response.status_code != 206:
                    done = 0  # the server sent the whole body (new content or no Range)
                elif not _range_starts_at(response, done):
                    raise _Retry("the server answered a different byte range")
                total = _body_length(response)
                total = None if total is None else done + total
                self._stream(response, target, done, total, progress)
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            raise _Retry(f"no bytes for {self.settings.stall_timeout_s:g} s") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _Retry(_connection_reason(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the disk is full: no retry helps
            raise _Retry(_connection_reason(exc)) from None

    def _stream(self, response, target: Path, done: int, total: int | None, progress) -> None:
        progress(done, total)
        with open(target, "ab" if done else "wb") as out:
            raw = response.raw
            while chunk := raw.read1(CHUNK):  # what arrived: a stall loses nothing
                out.write(chunk)
                done += len(chunk)
                progress(done, total)
        if total is not None and done < total:
            raise _Retry(f"the connection closed after {done} of {total} bytes")

    def _finished_already(self, target: Path, done: int) -> None:
        """A 416 for `bytes=<size>-` means the file on disk is already whole (when sizes agree)."""
        size = self._head.size if self._head else None
        if size is not None and done == size:
            return
        target.unlink(missing_ok=True)
        raise _Retry("the partial download no longer matches the server's file")

    def _check_status(self, response) -> None:
        code = response.status_code
        if code in (200, 206):
            return
        if code in (404, 410):
            raise PullError(f"{self.shown} was not found ({code}); check the URL")
        if code in (401, 403):
            raise PullError(
                f"{self.shown} refused access ({code}); the URL needs credentials or a "
                "fresh signed link"
            )
        if code == 429 or code >= 500:
            raise _Retry(f"the server answered {code}", _retry_after(response))
        raise PullError(f"{self.shown} answered HTTP {code}")

    def _verify(self, target: Path) -> None:
        size, expected = _size(target), self._head.size if self._head else None
        if expected is not None and size != expected:
            target.unlink(missing_ok=True)
            raise PullError(f"{self.shown}: got {size} bytes where the server announced {expected}")
        if self.source.sha256:
            actual = _sha256_of(target)
            if actual != self.source.sha256:
                target.unlink(missing_ok=True)
                raise PullError(
                    f"checksum mismatch for {self.shown}: expected sha256 "
                    f"{self.source.sha256}, got {actual}"
                )

    def _unpack(self, staging: Path, into: Path) -> None:
        try:
            unpack(staging / self.name, into, max_bytes=self.settings.max_unpacked_bytes)
        except ArchiveError as exc:
            shutil.rmtree(staging)
            raise PullError(str(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            raise PullError(f"{self.name} cannot be unpacked: {exc.strerror}") from None
        shutil.rmtree(staging)

    # -- metadata -----------------------------------------------------------------------------

    def _probe(self) -> _Head:
        """HEAD for the validator and size; servers that refuse HEAD (e.g. URLs signed for GET)
        are asked with a GET whose body is never read."""
        for attempt in range(self.settings.attempts):
            try:
                response = self.session.head(
                    self.source.url,
                    allow_redirects=True,
                    headers={"Accept-Encoding": "identity"},
                    timeout=(self.settings.connect_timeout_s, self.settings.stall_timeout_s),
                )
                if response.status_code in (403, 405, 501):
                    response = self.session.get(
                        self.source.url,
                        stream=True,
                        headers={"Accept-Encoding": "identity"},
                        timeout=(self.settings.connect_timeout_s, self.settings.stall_timeout_s),
                    )
                    response.close()
                self._check_status(response)
                return _Head(_validator(response), _body_length(response))
            except requests.RequestException as exc:
                reason = _connection_reason(exc)
            except _Retry as retry:
                reason = str(retry)
            time.sleep(self._backoff(attempt + 1))
        raise PullError(f"cannot reach {self.shown}: {reason}")

    def _backoff(self, failures: int) -> float:
        base = min(30.0, self.settings.backoff_s * 2 ** max(0, failures - 1))
        return base * random.uniform(0.8, 1.2)


def _file_name(url: str) -> str:
    """The URL's last path segment as a file name, or "weights" when it is not a safe one
    (an encoded slash, NUL, '.' or '..' must never become a path)."""
    name = unquote(Path(urlsplit(url).path).name)
    unsafe = not name or name in (".", "..") or any(c in name for c in "/\\\x00")
    return "weights" if unsafe else name


def _without_query(url: str) -> str:
    """A signed URL's query is a credential: messages and logs show the URL without it."""
    parts = urlsplit(url)
    return parts._replace(query="…" if parts.query else "", fragment="").geturl()


def _validator(response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _body_length(response) -> int | None:
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _range_starts_at(response, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def _retry_after(response) -> float | None:
    try:
        return min(60.0, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    if "Read timed out" in text:
        return "the server sent no bytes in time"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection dropped mid-download"
    if "refused" in text.lower():
        return "connection refused"
    return type(exc).__name__


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
