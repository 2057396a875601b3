"""What every route shares: error mapping, auth, body and query parsing, JSON responses."""

import functools
import json
from typing import TypeVar

from chalice import Response
from pydantic import BaseModel, ValidationError

from chalicelib.errors import PrismError, ValidationFailed
from chalicelib.logs import logger
from chalicelib.services import registry

JSON = {"Content-Type": "application/json"}
M = TypeVar("M", bound=BaseModel)


def error_response(error: PrismError) -> Response:
    return Response(body=error.to_body(), status_code=error.status, headers=JSON)


def handles_errors(view):
    """Domain errors become their 4xx; anything unexpected is logged and becomes a JSON 500
    with no internals in it."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except ValidationError as exc:
            return error_response(validation_failed(exc))
        except PrismError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error")
            return error_response(PrismError("an internal error occurred; it has been logged"))

    return wrapper


def validation_failed(exc: ValidationError) -> ValidationFailed:
    fields = {}
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(path, _message(err))
    summary = "; ".join(f"{path}: {msg}" for path, msg in fields.items())
    return ValidationFailed(f"invalid request: {summary}", fields=fields)


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "field required"
    return err["msg"].removeprefix("Value error, ")


def authenticate(request) -> str:
    owner_id = registry.auth_service().owner_for(request.headers.get("authorization"))
    logger.append_keys(owner_id=owner_id)
    return owner_id


def parse_body(request, model: type[M]) -> M:
    raw = request.raw_body
    if not raw:
        raise ValidationFailed("request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except RecursionError:  # nested deeper than the interpreter's limit (our models need ~4)
        raise ValidationFailed("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object")
    return model.model_validate(data)


def parse_query(request, model: type[M]) -> M:
    """A repeated parameter (`status=a&status=b`) arrives as the list of its values (a field
    that takes one value then refuses it with a 400)."""
    params = request.query_params or {}
    return model.model_validate({name: _one_or_all(params.getlist(name)) for name in params})


def _one_or_all(values: list[str]):
    return values[0] if len(values) == 1 else values


def ok(model: BaseModel, status: int = 200) -> Response:
    return Response(body=model.model_dump_json(), status_code=status, headers=JSON)
