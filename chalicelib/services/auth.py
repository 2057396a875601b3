"""Who is calling: `Authorization: Bearer <api key>` -> owner id."""

from chalicelib.errors import Unauthorized
from chalicelib.store.users import UserRepository


class AuthService:
    def __init__(self, users: UserRepository):
        self._users = users

    def owner_for(self, authorization: str | None) -> str:
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("malformed Authorization header: use 'Bearer <key>'")
        if len(key) > 256:
            raise Unauthorized("invalid API key")
        owner_id = self._users.owner_of_key(key)
        if owner_id is None:
            raise Unauthorized("invalid API key")
        return owner_id
