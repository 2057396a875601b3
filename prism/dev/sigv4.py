"""Checks an AWS Signature Version 4 the way an AWS endpoint does, with botocore's own signer:
the local management API accepts only requests signed with the platform functions' keys."""

import datetime
import hmac
import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<sig>\w+)$"
)
MAX_SKEW = datetime.timedelta(minutes=15)  # AWS refuses a signature older or newer than this


def signer_of(
    method: str, url: str, headers: dict, body: bytes, keys: dict[str, str], service: str
) -> str | None:
    """The access key id whose secret (from `keys`) made the request's valid SigV4 signature
    for `service`, or None."""
    lowered = {k.lower(): v for k, v in headers.items()}
    match = AUTHORIZATION.match(lowered.get("authorization", ""))
    stamp = lowered.get("x-amz-date", "")
    if not match or match["key"] not in keys or match["service"] != service or not _fresh(stamp):
        return None
    access_key, secret_key = match["key"], keys[match["key"]]
    signed = match["signed"].split(";")
    request = AWSRequest(
        method=method, url=url, data=body, headers={h: lowered.get(h, "") for h in signed}
    )
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret_key), match["service"], match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return access_key if hmac.compare_digest(expected, match["sig"]) else None


def _fresh(stamp: str) -> bool:
    try:
        when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return False
    return abs(datetime.datetime.now(datetime.UTC) - when) <= MAX_SKEW
