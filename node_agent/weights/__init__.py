"""Getting weights onto the node. This first cut serves local paths and https:// URLs; the
weights issue adds hf://, r2:// and the shared content-addressed cache behind the same call."""

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests

from chalicelib.weights_uri import LocalSource, UrlSource, parse_weights_uri

Progress = Callable[[int, int | None], None]


class PullError(Exception):
    """The weights could not be fetched; the message says what to fix."""


def fetch(source: str, cache_dir: Path, progress: Progress) -> Path:
    parsed = parse_weights_uri(source, allow_http=True)
    if isinstance(parsed, LocalSource):
        return _local(Path(parsed.path))
    if isinstance(parsed, UrlSource):
        return _download(parsed, cache_dir, progress)
    raise PullError(f"{source}: this node agent cannot pull this kind of source yet")


def _local(path: Path) -> Path:
    if not path.exists():
        raise PullError(f"{path} does not exist on this node")
    if not os.access(path, os.R_OK):
        raise PullError(f"{path} is not readable by the node agent")
    return path


def _download(source: UrlSource, cache_dir: Path, progress: Progress) -> Path:
    key = hashlib.sha256(source.uri().encode()).hexdigest()[:32]
    target_dir = cache_dir / key
    name = Path(urlsplit(source.url).path).name or "weights"
    target = target_dir / name
    if target.exists():
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    digest = hashlib.sha256()
    try:
        with requests.get(source.url, stream=True, timeout=(10, 60)) as response:
            if response.status_code == 404:
                raise PullError(f"{source.url} not found (404)")
            if response.status_code in (401, 403):
                raise PullError(f"{source.url} refused access ({response.status_code})")
            response.raise_for_status()
            total = int(response.headers.get("Content-Length", 0)) or None
            done = 0
            with open(partial, "wb") as out:
                for chunk in response.iter_content(1024 * 1024):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress(done, total)
    except requests.RequestException as exc:
        raise PullError(f"download of {source.url} failed: {type(exc).__name__}") from None
    if source.sha256 and digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise PullError(f"checksum mismatch for {source.url}: got sha256 {digest.hexdigest()}")
    partial.rename(target)
    return target_dir
