"""Parse a weights source string into a typed value. Pure: no I/O.

Accepted forms:
  hf://org/model[@revision]   (KServe's hf://org/model:revision too)
  r2://bucket/key-or-prefix   (s3://bucket/key too)
  https://host/path[#sha256=<hex>]   (http:// only when explicitly allowed)
  /absolute/local/path
"""

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ACCEPTED_FORMS = (
    "hf://org/model[@revision], r2://bucket/path, s3://bucket/path, https://host/path "
    "or an absolute local path"
)

# Always applied with fullmatch: Python's `$` would also match before a final newline.
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"{_HF_NAME}/{_HF_NAME}")
_HF_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidWeightsSource(ValueError):
    """The string is not one of the accepted forms; the message says why."""


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    revision: str = "main"

    def uri(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class BucketSource:
    scheme: str  # "r2" or "s3"
    bucket: str
    key: str  # an object key or a prefix; "" means the whole bucket

    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class UrlSource:
    url: str
    sha256: str | None = None

    def uri(self) -> str:
        return f"{self.url}#sha256={self.sha256}" if self.sha256 else self.url


@dataclass(frozen=True)
class LocalSource:
    path: str

    def uri(self) -> str:
        return self.path


WeightsSource = HfSource | BucketSource | UrlSource | LocalSource


def parse_weights_uri(text: str, *, allow_http: bool = False) -> WeightsSource:
    """Taken as given, never trimmed or cleaned: a source with surrounding whitespace or a
    control character (a trailing newline included) is refused, not silently altered."""
    if not text.strip():
        raise InvalidWeightsSource(f"is empty; use {ACCEPTED_FORMS}")
    if text != text.strip():
        raise InvalidWeightsSource("must not start or end with whitespace")
    if _CONTROL.search(text):
        raise InvalidWeightsSource("contains a control character (a newline, tab or NUL)")
    if text.startswith("/"):
        return _parse_local(text)
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise InvalidWeightsSource(f"is not a recognised weights source; use {ACCEPTED_FORMS}")
    scheme = scheme.lower()
    if scheme == "hf":
        return _parse_hf(text[len("hf://") :])
    if scheme in ("r2", "s3"):
        return _parse_bucket(scheme, text[len(scheme) + 3 :])
    if scheme == "https" or (scheme == "http" and allow_http):
        return _parse_url(text)
    if scheme == "http":
        raise InvalidWeightsSource(
            "uses plain http://, which is refused unless allow_insecure_http is true; use https://"
        )
    raise InvalidWeightsSource(f"has unsupported scheme {scheme!r}; use {ACCEPTED_FORMS}")


def _parse_hf(rest: str) -> HfSource:
    repo, revision = rest, "main"
    if "@" in rest:
        repo, revision = rest.split("@", 1)
    elif rest.count(":") == 1:  # KServe spelling: hf://org/model:revision
        repo, revision = rest.split(":", 1)
    if not _HF_REPO.fullmatch(repo):
        raise InvalidWeightsSource(
            "must name a Hugging Face repository as hf://org/model[@revision]"
        )
    if not _HF_REVISION.fullmatch(revision) or ".." in revision:
        raise InvalidWeightsSource("has an invalid revision (a branch, tag or commit sha)")
    return HfSource(repo_id=repo, revision=revision)


def _parse_bucket(scheme: str, rest: str) -> BucketSource:
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise InvalidWeightsSource(
            f"must be {scheme}://bucket/path with a valid bucket name (3-63 lowercase "
            "letters, digits, dots and hyphens)"
        )
    if any(part in ("..", ".") for part in key.split("/")):
        raise InvalidWeightsSource("must not contain '.' or '..' path segments")
    return BucketSource(scheme=scheme, bucket=bucket, key=key)


def _parse_url(text: str) -> UrlSource:
    if any(c.isspace() for c in text):
        raise InvalidWeightsSource("must not contain whitespace; percent-encode it (%20)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise InvalidWeightsSource(f"is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise InvalidWeightsSource("must include a host name")
    if parts.username or parts.password:
        raise InvalidWeightsSource(
            "must not embed credentials in the URL; pass them as env_vars instead"
        )
    sha256 = None
    if parts.fragment:
        name, _, value = parts.fragment.partition("=")
        if name != "sha256" or not _SHA256.fullmatch(value.lower()):
            raise InvalidWeightsSource("fragment must be #sha256=<64 hex characters>")
        sha256 = value.lower()
    url = parts._replace(fragment="").geturl()
    return UrlSource(url=url, sha256=sha256)


def _parse_local(text: str) -> LocalSource:
    normalized = posixpath.normpath(text)
    if normalized != text.rstrip("/") and text != "/":
        raise InvalidWeightsSource(
            "must be a normalized absolute path (no '.', '..' or repeated slashes)"
        )
    return LocalSource(path=normalized)
