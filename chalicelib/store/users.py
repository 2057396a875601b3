"""Users and their API keys. A key is stored only as its SHA-256 hash.

A key is known to an operator by its id (`key_` + the first 12 hex of its hash: shown at
creation and by `prism admin list-keys`, harmless to show), by its display prefix (its first
10 characters) or by the key itself. Revoking a key deletes its item: the next request with it
finds nothing (a consistent read) and gets a 401.
"""

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from pynamodb.exceptions import DeleteError

from chalicelib.store.models import ApiKeyItem, UserItem

KEY_PREFIX = "prism_"
KEY_ID_PREFIX = "key_"
DISPLAY_PREFIX_LENGTH = 10  # what `key_prefix` keeps of a key: "prism_" and 4 characters
_KEY_ID = re.compile(r"key_([0-9a-f]{12})")


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast unsalted hash is safe (as GitHub does for PATs).
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(key_hash: str) -> str:
    """How an operator names a key without holding it."""
    return KEY_ID_PREFIX + key_hash[:12]


@dataclass(frozen=True)
class NewKey:
    user_id: str
    user_name: str
    api_key: str  # shown once; only its hash is stored

    @property
    def key_id(self) -> str:
        return key_id(hash_key(self.api_key))


class UnknownKeyReference(ValueError):
    """Neither a key, a key id nor a display prefix."""


class UserRepository:
    def create_user_with_key(self, name: str) -> NewKey:
        user = UserItem(id=f"usr_{uuid.uuid4().hex[:16]}", name=name)
        user.save(condition=UserItem.id.does_not_exist())
        return self.add_key(user.id, name)

    def add_key(self, user_id: str, user_name: str) -> NewKey:
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        ApiKeyItem(
            key_hash=hash_key(api_key),
            owner_id=user_id,
            key_prefix=api_key[:DISPLAY_PREFIX_LENGTH],
        ).save(condition=ApiKeyItem.key_hash.does_not_exist())
        return NewKey(user_id=user_id, user_name=user_name, api_key=api_key)

    def owner_of_key(self, api_key: str) -> str | None:
        # Consistent: a key revoked a moment ago must not be seen by an eventually consistent
        # read that has not caught up yet.
        try:
            return ApiKeyItem.get(hash_key(api_key), consistent_read=True).owner_id
        except ApiKeyItem.DoesNotExist:
            return None

    def get_user(self, user_id: str) -> UserItem | None:
        try:
            return UserItem.get(user_id, consistent_read=True)
        except UserItem.DoesNotExist:
            return None

    def keys_of(self, user_id: str) -> list[ApiKeyItem]:
        """Every key of a user, oldest first. A Scan (the table has no owner index): operator
        commands only, never on a request's path."""
        found = ApiKeyItem.scan(ApiKeyItem.owner_id == user_id, consistent_read=True)
        return sorted(found, key=lambda item: item.created_at)

    def find_keys(self, reference: str, user_id: str | None = None) -> list[ApiKeyItem]:
        """The keys a reference names: the key itself (one GetItem), its id (`key_<12 hex>`)
        or its display prefix (which several keys may share), optionally only a user's."""
        if reference.startswith(KEY_PREFIX) and len(reference) > DISPLAY_PREFIX_LENGTH:
            try:
                found = [ApiKeyItem.get(hash_key(reference), consistent_read=True)]
            except ApiKeyItem.DoesNotExist:
                found = []
        elif match := _KEY_ID.fullmatch(reference):
            condition = ApiKeyItem.key_hash.startswith(match.group(1))
            found = list(ApiKeyItem.scan(condition, consistent_read=True))
        elif reference.startswith(KEY_PREFIX) and len(reference) == DISPLAY_PREFIX_LENGTH:
            condition = ApiKeyItem.key_prefix == reference
            found = list(ApiKeyItem.scan(condition, consistent_read=True))
        else:
            raise UnknownKeyReference(
                f"{reference!r} is not a key (prism_…), a key id (key_ and 12 hex digits, from "
                "`prism admin list-keys`) or a key's first 10 characters"
            )
        return [item for item in found if user_id is None or item.owner_id == user_id]

    def delete_key(self, item: ApiKeyItem) -> bool:
        """False when it was already gone."""
        try:
            item.delete(condition=ApiKeyItem.key_hash.exists())
        except DeleteError as exc:
            if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def delete_user(self, user_id: str) -> bool:
        """The user's item only (its keys go first, with delete_key). False when gone."""
        try:
            UserItem(id=user_id).delete(condition=UserItem.id.exists())
        except DeleteError as exc:
            if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
                raise
            return False
        return True
