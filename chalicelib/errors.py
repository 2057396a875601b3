"""Domain errors and their HTTP mapping, in one place.

Services raise these; the route layer turns them into `{"error": {code, message, fields}}`.
"""


class PrismError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def to_body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class ValidationFailed(PrismError):
    status = 400
    code = "validation_error"


class Unauthorized(PrismError):
    status = 401
    code = "unauthorized"


class NotFound(PrismError):
    status = 404
    code = "not_found"


class Conflict(PrismError):
    status = 409
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class IdempotencyMismatch(PrismError):
    status = 422
    code = "idempotency_key_reused"
