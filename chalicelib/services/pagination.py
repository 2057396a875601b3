"""Opaque next_token <-> PageCursor. The token carries positions, the filter it was made for and
a digest binding it to the owner, filter and positions; never the owner itself. The service
rebuilds every start key from the authenticated owner, and a token that is garbage, tampered
with, another owner's or another query's is a 400 (never a DynamoDB error)."""

import base64
import binascii
import hashlib
import hmac
import json
import re

from chalicelib.errors import ValidationFailed
from chalicelib.store.deployment_pages import PageCursor
from chalicelib.store.deployments import DEPLOYMENT_ID

_INVALID = "next_token is not valid; pass back the value from the previous page unchanged"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
# created_at as DeploymentItem.created_at serializes it (UTCDateTimeAttribute)
_CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+0000")
_STATUS_SUFFIX = re.compile(r"(#[a-z]{1,20})?")


def encode_cursor(cursor: PageCursor | None, owner_id: str, filter_key: str) -> str | None:
    if cursor is None:
        return None
    positions = {
        name.removeprefix(owner_id): list(pos) if pos else None
        for name, pos in cursor.positions.items()
    }
    body = {"f": filter_key, "p": positions}
    body["d"] = _digest(owner_id, body)
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str | None, owner_id: str, filter_key: str) -> PageCursor | None:
    if not token:
        return None
    if not _TOKEN_CHARS.fullmatch(token):
        raise _malformed()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        digest, positions, token_filter = data.pop("d"), data["p"], data["f"]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise _malformed() from None
    if not isinstance(digest, str) or not hmac.compare_digest(digest, _digest(owner_id, data)):
        # another owner's token, or one edited by hand
        raise ValidationFailed(_INVALID, fields={"next_token": "not a token of this list"})
    if token_filter != filter_key:
        raise ValidationFailed(
            "next_token belongs to a list with another status filter; repeat the same filter",
            fields={"next_token": "made for another filter"},
        )
    if not isinstance(positions, dict):
        raise _malformed()
    parsed: dict[str, tuple[str, str] | None] = {}
    for suffix, pos in positions.items():
        if not _STATUS_SUFFIX.fullmatch(suffix) or not (pos is None or _is_position(pos)):
            raise _malformed()
        parsed[owner_id + suffix] = tuple(pos) if pos else None
    return PageCursor(parsed)


def _is_position(pos) -> bool:
    """(created_at, id) of a deployment, as the store wrote it."""
    return (
        isinstance(pos, list)
        and len(pos) == 2
        and all(isinstance(p, str) for p in pos)
        and bool(_CREATED_AT.fullmatch(pos[0]))
        and bool(DEPLOYMENT_ID.fullmatch(pos[1]))
    )


def _digest(owner_id: str, body: dict) -> str:
    """Binds a token to its owner and content: not a secret (an owner could forge a token for
    their own list, which only moves them within it), but another owner's token, a token of
    another query or one altered on the way no longer matches."""
    content = json.dumps([owner_id, body], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:22]


def _malformed() -> ValidationFailed:
    return ValidationFailed(_INVALID, fields={"next_token": "malformed"})


def seal(position: str, binding: str) -> str:
    """A next_token for a simple paged query (one position string), bound to what it pages
    (e.g. f"{owner_id}/{deployment_id}/costs"): `unseal` with another binding is a 400."""
    body = {"p": position}
    body["d"] = _digest(binding, body)
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unseal(token: str, binding: str) -> str:
    if not _TOKEN_CHARS.fullmatch(token):
        raise _malformed()
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        digest, position = data.pop("d"), data["p"]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise _malformed() from None
    if not isinstance(digest, str) or not hmac.compare_digest(digest, _digest(binding, data)):
        raise ValidationFailed(_INVALID, fields={"next_token": "not a token of this list"})
    if not isinstance(position, str):
        raise _malformed()
    return position
