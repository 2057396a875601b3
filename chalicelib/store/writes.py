"""Conditional writes and transactions, as every repository uses them."""

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError, UpdateError

from chalicelib.config import settings


def is_condition_failure(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def update_if(item, actions: list, condition) -> bool:
    """A conditional update that leaves the version alone; False when the condition did not
    hold (someone else got there first, or the item moved on)."""
    try:
        item.update(actions=actions, condition=condition, add_version_condition=False)
    except UpdateError as exc:
        if is_condition_failure(exc):
            return False
        raise
    return True


def cancelled_by_a_condition(exc: TransactWriteError) -> bool:
    """A transaction refused because one of its conditions did not hold, or because another
    transaction on the same items got there first (both: someone else wrote meanwhile)."""
    reasons = exc.cancellation_reasons or []
    return exc.cause_response_code == "TransactionCanceledException" and any(
        reason is not None and reason.code in ("ConditionalCheckFailed", "TransactionConflict")
        for reason in reasons
    )


def transaction_connection() -> Connection:
    """For transactions, which span tables (the models each keep their own connection)."""
    return Connection(region=settings.region, host=settings.aws_endpoint_url)
