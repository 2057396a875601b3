"""Opaque next_token <-> PageCursor. The token carries positions and the filter it was made
for, never an owner: the service rebuilds every start key from the authenticated owner."""

import base64
import binascii
import json

from chalicelib.errors import ValidationFailed
from chalicelib.store.deployments import PageCursor

_INVALID = "next_token is not valid; pass back the value from the previous page unchanged"


def encode_cursor(cursor: PageCursor | None, owner_id: str, filter_key: str) -> str | None:
    if cursor is None:
        return None
    positions = {
        name.removeprefix(owner_id): list(pos) if pos else None
        for name, pos in cursor.positions.items()
    }
    raw = json.dumps({"f": filter_key, "p": positions}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str | None, owner_id: str, filter_key: str) -> PageCursor | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        positions = data["p"]
        token_filter = data["f"]
        if not isinstance(positions, dict):
            raise ValueError
        parsed: dict[str, tuple[str, str] | None] = {}
        for suffix, pos in positions.items():
            if suffix and not suffix.startswith("#"):
                raise ValueError
            if pos is not None and not (
                isinstance(pos, list) and len(pos) == 2 and all(isinstance(p, str) for p in pos)
            ):
                raise ValueError
            parsed[owner_id + suffix] = tuple(pos) if pos else None
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(_INVALID, fields={"next_token": "malformed"}) from None
    if token_filter != filter_key:
        raise ValidationFailed(
            "next_token belongs to a list with another status filter; repeat the same filter",
            fields={"next_token": "made for another filter"},
        )
    return PageCursor(parsed)
