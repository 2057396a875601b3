"""r2:// and s3:// weights through boto3's S3 client: one object, or every object under a prefix,
in parallel ranged parts. R2 is S3 with an account endpoint and region "auto".

The parts are written in order to a part file of a stable name, so it always holds a prefix of
the object: a pull the agent was killed in continues from it (boto3's download_file would write
parts at their offsets into a temporary name, leaving nothing a new process can resume)."""

import functools
import posixpath
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from itertools import islice
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from chalicelib.weights_uri import BucketSource
from node_agent.weights.base import (
    PARTS,
    ByteCounter,
    MiB,
    Progress,
    PullError,
    PullSettings,
    Resolved,
    env_value,
    part_file,
)

PARALLEL_FILES = 4
PART = 16 * MiB  # one ranged GET
PARTS_IN_FLIGHT = 6  # per object; each may wait in memory for an earlier, slower one
NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
CHANGED = {"412", "PreconditionFailed"}  # If-Match: the object was replaced since the listing


@dataclass(frozen=True)
class _Object:
    key: str
    relative: str  # where it lands under the weights directory
    size: int
    etag: str


class BucketWeights:
    def __init__(self, source: BucketSource, env: dict[str, str], settings: PullSettings):
        self.source = source
        self.settings = settings
        try:
            self.client = _client(source.scheme, env, settings)
        except ValueError as exc:  # e.g. an endpoint URL without https://
            raise PullError(f"{source.uri()}: invalid object store settings: {exc}") from None
        self._objects: list[_Object] = []

    def resolve(self) -> Resolved:
        try:
            self._objects = self._single_object() or self._under_prefix()
        except ClientError as exc:
            raise self._error(exc) from None
        except (BotoCoreError, NoCredentialsError) as exc:
            raise self._error(exc) from None
        listing = "\n".join(f"{o.relative} {o.etag} {o.size}" for o in self._objects)
        # The endpoint (R2 account) is part of what the weights are: another store with the
        # same bucket name and forged ETags must not fill the cache.
        endpoint = self.client.meta.endpoint_url
        key = f"{endpoint}|{self.source.uri()}|{sha256(listing.encode()).hexdigest()}"
        return Resolved(key=key, size=sum(o.size for o in self._objects))

    def download(self, into: Path, progress: Progress) -> None:
        names = {o.relative for o in self._objects}
        _remove_strays(into, names | {f"{PARTS}/{name}.part" for name in names})
        counter = ByteCounter(progress, sum(o.size for o in self._objects))
        pool = ThreadPoolExecutor(PARALLEL_FILES)
        try:
            for future in [pool.submit(self._fetch, o, into, counter) for o in self._objects]:
                future.result()
        finally:  # the first failure stops the rest instead of waiting for every object
            pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(into / PARTS, ignore_errors=True)  # the emptied part folders

    def _fetch(self, obj: _Object, into: Path, counter: ByteCounter) -> None:
        target = into / obj.relative
        if target.is_file() and target.stat().st_size == obj.size:
            counter.add(obj.size)  # finished by an earlier, interrupted pull
            return
        part = part_file(into, obj.relative)
        try:
            with open(part, "ab") as out:
                counter.add(out.tell())  # the bytes an earlier, killed agent wrote
                self._append(obj, out, counter)
        except ClientError as exc:
            raise self._error(exc, obj.key) from None
        except (BotoCoreError, *S3_RETRYABLE_DOWNLOAD_ERRORS) as exc:
            raise PullError(
                f"download of {self._uri(obj.key)} failed after retries (stalled or dropped "
                f"connections): {type(exc).__name__}"
            ) from None
        if (size := part.stat().st_size) != obj.size:
            part.unlink()
            raise PullError(
                f"{self._uri(obj.key)}: got {size} bytes where the listing said {obj.size}; retry"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        part.replace(target)

    def _append(self, obj: _Object, out, counter: ByteCounter) -> None:
        """The rest of the object after what `out` holds: parts fetched in parallel, written in
        order."""
        starts = iter(range(out.tell(), obj.size, PART))
        with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
            window = deque(pool.submit(self._part, obj, s) for s in islice(starts, PARTS_IN_FLIGHT))
            while window:
                data = window.popleft().result()
                out.write(data)
                counter.add(len(data))
                window.extend(pool.submit(self._part, obj, s) for s in islice(starts, 1))

    def _part(self, obj: _Object, start: int) -> bytes:
        """botocore retries a request that fails, not a body that stalls or drops: read again."""
        end = min(start + PART, obj.size) - 1
        for attempt in range(1, self.settings.attempts + 1):
            try:
                answer = self.client.get_object(
                    Bucket=self.source.bucket,
                    Key=obj.key,
                    Range=f"bytes={start}-{end}",
                    IfMatch=obj.etag,  # the bytes already on disk are of this version
                )
                return answer["Body"].read()
            except S3_RETRYABLE_DOWNLOAD_ERRORS:
                if attempt == self.settings.attempts:
                    raise

    # -- listing --------------------------------------------------------------------------------

    def _single_object(self) -> list[_Object]:
        key = self.source.key
        if not key or key.endswith("/"):
            return []
        try:
            head = self.client.head_object(Bucket=self.source.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return []  # maybe a prefix
            raise
        name = posixpath.basename(key)
        return [_Object(key, name, head["ContentLength"], head.get("ETag", ""))]

    def _under_prefix(self) -> list[_Object]:
        prefix = self.source.key.rstrip("/") + "/" if self.source.key else ""
        objects = []
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # a "folder" marker
                relative = item["Key"][len(prefix) :]
                _check_relative(relative, item["Key"])
                objects.append(_Object(item["Key"], relative, item["Size"], item.get("ETag", "")))
        if not objects:
            raise PullError(f"{self.source.uri()}: no object or prefix of that name was found")
        return objects

    # -- errors ---------------------------------------------------------------------------------

    def _uri(self, key: str) -> str:
        return f"{self.source.scheme}://{self.source.bucket}/{key}"

    def _error(self, exc: Exception, key: str | None = None) -> PullError:
        where = self._uri(key) if key else self.source.uri()
        if isinstance(exc, NoCredentialsError):
            return PullError(f"{where}: no credentials; {_credential_hint(self.source.scheme)}")
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in NOT_FOUND:
                return PullError(f"{where} was not found ({code})")
            if code in CHANGED:
                return PullError(f"{where} changed during the download; retry")
            if code in DENIED:
                return PullError(
                    f"{where}: access denied ({code}); {_credential_hint(self.source.scheme)}"
                )
            return PullError(f"{where}: {code}: {exc.response.get('Error', {}).get('Message')}")
        return PullError(f"{where}: cannot reach the object store ({type(exc).__name__})")


def _client(scheme: str, env: dict[str, str], settings: PullSettings):
    if scheme == "r2":
        endpoint = env_value(env, "R2_ENDPOINT_URL")
        if not endpoint and (account := env_value(env, "R2_ACCOUNT_ID")):
            endpoint = f"https://{account}.r2.cloudflarestorage.com"
        if not endpoint:
            raise PullError("r2:// needs R2_ACCOUNT_ID (or R2_ENDPOINT_URL) in env_vars")
        return _s3_client(
            endpoint,
            "auto",
            (env_value(env, "R2_ACCESS_KEY_ID"), env_value(env, "R2_SECRET_ACCESS_KEY"), None),
            settings,
        )
    return _s3_client(
        env_value(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        env_value(env, "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        (
            env_value(env, "AWS_ACCESS_KEY_ID"),
            env_value(env, "AWS_SECRET_ACCESS_KEY"),
            env_value(env, "AWS_SESSION_TOKEN"),
        ),
        settings,
    )


@functools.lru_cache(maxsize=16)
def _s3_client(endpoint, region, credentials: tuple, settings: PullSettings):
    """Made once per endpoint and credentials: a boto3 client costs ~50 ms, more than a cache
    hit may take."""
    key_id, secret, token = credentials
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.stall_timeout_s,
        retries={"max_attempts": settings.attempts, "mode": "standard"},
        max_pool_connections=PARALLEL_FILES * PARTS_IN_FLIGHT,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=config,
    )


def _credential_hint(scheme: str) -> str:
    if scheme == "r2":
        return "set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY in env_vars"
    return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in env_vars (or the node's role)"


def _remove_strays(into: Path, wanted: set[str]) -> None:
    """Files an earlier pull left under other names (an older agent's s3transfer temporary
    files) must not end up in the published weights."""
    for path in [p for p in into.rglob("*") if p.is_file()]:
        if path.relative_to(into).as_posix() not in wanted:
            path.unlink()


def _check_relative(relative: str, key: str) -> None:
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise PullError(f"object key {key!r} cannot be stored safely as a file (., .. or //)")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
