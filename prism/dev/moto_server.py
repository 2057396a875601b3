"""moto as local AWS. Makes moto's DynamoDB apply each write atomically, as DynamoDB does.

moto checks a ConditionExpression and then writes without a lock, so two threads can both pass
the same condition; real DynamoDB never lets that happen. Our correctness rests on conditional
writes, so the local platform and the tests serialise moto's DynamoDB writes.

Run as `python -m prism.dev.moto_server [moto.server args]` to start a moto server this way.
The local platform also sets PRISM_MOTO_STATE_DIR (the state persists there:
prism.dev.moto_state) and PRISM_LOCAL_IDENTITIES (IAM enforced, each identity's key acting
as its role: prism.dev.identities). With PRISM_MOTO_SCAN_LOG=<file> set, every DynamoDB Scan
appends its table name to that file (benchmarks use it to prove the API never scans); with
PRISM_MOTO_CALL_LOG=<file>, every AWS call appends "<service> <action>" (benchmarks count calls
per deployment).
"""

import functools
import os
import threading

from moto.dynamodb.models import DynamoDBBackend

_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_lock = threading.RLock()


def make_dynamodb_writes_atomic() -> None:
    for name in _WRITES:
        method = getattr(DynamoDBBackend, name)
        if getattr(method, "_prism_atomic", False):
            continue

        @functools.wraps(method)
        def atomic(self, *args, _method=method, **kwargs):
            with _lock:
                return _method(self, *args, **kwargs)

        atomic._prism_atomic = True
        setattr(DynamoDBBackend, name, atomic)


def make_transactions_cheap() -> None:
    """moto deep-copies every table a TransactWriteItems touches, to roll back on failure: the
    cost grows with the table (0.35 s a transaction at 3,000 items), where DynamoDB's does not.
    Snapshot just the items the transaction touches instead, and put those back on failure."""
    import copy
    import types

    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table

    if getattr(DynamoDBBackend.transact_write_items, "_prism_cheap", False):
        return
    real_deepcopy = copy.deepcopy
    inside = threading.local()

    def deepcopy(obj, memo=None):
        if getattr(inside, "transaction", False) and isinstance(obj, Table):
            return obj  # rolled back item by item below
        return real_deepcopy(obj, memo)

    models.copy = types.SimpleNamespace(deepcopy=deepcopy, copy=copy.copy)
    original = DynamoDBBackend.transact_write_items

    @functools.wraps(original)
    def transact_write_items(self, transact_items):
        with _lock:  # snapshot, transaction and any rollback as one step, like DynamoDB
            before = [_snapshot(self, entry) for entry in transact_items]
            inside.transaction = True
            try:
                return original(self, transact_items)
            except Exception:
                for table_name, key, item in before:
                    _restore(self, table_name, key, item)
                raise
            finally:
                inside.transaction = False

    transact_write_items._prism_cheap = True
    DynamoDBBackend.transact_write_items = transact_write_items


def _snapshot(backend, entry: dict):
    import copy

    op = next(iter(entry.values()))
    table_name = op.get("TableName")
    if table_name not in backend.tables:
        return table_name, None, None
    table = backend.get_table(table_name)
    key = op.get("Key")
    if key is None:  # a Put names its key inside the item
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        key = {name: op["Item"][name] for name in names if name in op["Item"]}
    current = backend.get_item(table_name, key)
    return table_name, key, None if current is None else copy.deepcopy(current.to_json())


def _restore(backend, table_name, key, item_json) -> None:
    if key is None:
        return
    if item_json is None:
        if backend.get_item(table_name, key) is not None:
            backend.delete_item(table_name, key)
    else:
        backend.put_item(table_name, item_json["Attributes"])


def close_moto_api() -> None:
    """AWS has no unauthenticated back door: moto's own API (/moto-api/: reset, state, config)
    answers only its readiness probe, and the settings the platform needs are set here."""
    from moto.core.config import default_user_config
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    from prism.dev.lambda_router import SFN_CONFIG

    for service, settings in SFN_CONFIG.items():
        default_user_config[service].update(settings)
    serve = DomainDispatcherApplication.__call__

    def guarded(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/moto-api") and (path, environ["REQUEST_METHOD"]) != (
            "/moto-api/",
            "GET",
        ):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"moto's API is closed on the local platform\n"]
        return serve(self, environ, start_response)

    DomainDispatcherApplication.__call__ = guarded


def log_scans_to(path: str) -> None:
    scan = DynamoDBBackend.scan

    @functools.wraps(scan)
    def logged_scan(self, table_name, *args, **kwargs):
        with open(path, "a") as log:
            log.write(f"{table_name}\n")
        return scan(self, table_name, *args, **kwargs)

    DynamoDBBackend.scan = logged_scan


def log_calls_to(path: str) -> None:
    from moto.core.responses import BaseResponse

    call_action = BaseResponse.call_action
    log = open(path, "a", buffering=1)  # noqa: SIM115 - open for the server's lifetime

    @functools.wraps(call_action)
    def logged(self):
        log.write(f"{self.__class__.__name__} {self._get_action()}\n")
        return call_action(self)

    BaseResponse.call_action = logged


if __name__ == "__main__":
    from moto.server import main

    make_dynamodb_writes_atomic()
    make_transactions_cheap()
    if os.environ.get("PRISM_MOTO_STATE_DIR"):  # the platform's local AWS survives restarts
        from pathlib import Path

        from prism.dev.moto_state import persist_state

        persist_state(Path(os.environ["PRISM_MOTO_STATE_DIR"]))
    if os.environ.get("PRISM_LOCAL_IDENTITIES"):  # IAM enforced (INITIAL_NO_AUTH_ACTION_COUNT=0)
        from pathlib import Path

        from prism.dev import identities
        from prism.dev.moto_iam import match_resources

        match_resources()  # policies are evaluated on the resources a call touches
        identities.install(Path(os.environ["PRISM_LOCAL_IDENTITIES"]))
        close_moto_api()
    if os.environ.get("PRISM_MOTO_SCAN_LOG"):
        log_scans_to(os.environ["PRISM_MOTO_SCAN_LOG"])
    if os.environ.get("PRISM_MOTO_CALL_LOG"):
        log_calls_to(os.environ["PRISM_MOTO_CALL_LOG"])
    if os.environ.get("PRISM_LOCAL_FUNCTIONS_URL"):  # the platform: Step Functions runs steps
        import sys

        from prism.dev.lambda_router import route_lambda_to_service

        port = sys.argv[sys.argv.index("-p") + 1] if "-p" in sys.argv else "5000"
        os.environ["MOTO_PORT"] = port  # where moto's Step Functions calls Lambda
        route_lambda_to_service(os.environ["PRISM_LOCAL_FUNCTIONS_URL"])
    main()
