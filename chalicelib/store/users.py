"""Users and their API keys. A key is stored only as its SHA-256 hash."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from chalicelib.store.models import ApiKeyItem, UserItem

KEY_PREFIX = "prism_"


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast unsalted hash is safe (as GitHub does for PATs).
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    user_id: str
    user_name: str
    api_key: str  # shown once; only its hash is stored


class UserRepository:
    def create_user_with_key(self, name: str) -> NewKey:
        user = UserItem(id=f"usr_{uuid.uuid4().hex[:16]}", name=name)
        user.save(condition=UserItem.id.does_not_exist())
        return self.add_key(user.id, name)

    def add_key(self, user_id: str, user_name: str) -> NewKey:
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        ApiKeyItem(key_hash=hash_key(api_key), owner_id=user_id, key_prefix=api_key[:10]).save(
            condition=ApiKeyItem.key_hash.does_not_exist()
        )
        return NewKey(user_id=user_id, user_name=user_name, api_key=api_key)

    def owner_of_key(self, api_key: str) -> str | None:
        try:
            return ApiKeyItem.get(hash_key(api_key)).owner_id
        except ApiKeyItem.DoesNotExist:
            return None
