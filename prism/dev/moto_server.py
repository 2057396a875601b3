"""moto as local AWS. Makes moto's DynamoDB apply each write atomically, as DynamoDB does.

moto checks a ConditionExpression and then writes without a lock, so two threads can both pass
the same condition; real DynamoDB never lets that happen. Our correctness rests on conditional
writes, so the local platform and the tests serialise moto's DynamoDB writes.

Run as `python -m prism.dev.moto_server [moto.server args]` to start a moto server this way.
With PRISM_MOTO_SCAN_LOG=<file> set, every DynamoDB Scan appends its table name to that file
(benchmarks use it to prove the API never scans).
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


def log_scans_to(path: str) -> None:
    scan = DynamoDBBackend.scan

    @functools.wraps(scan)
    def logged_scan(self, table_name, *args, **kwargs):
        with open(path, "a") as log:
            log.write(f"{table_name}\n")
        return scan(self, table_name, *args, **kwargs)

    DynamoDBBackend.scan = logged_scan


if __name__ == "__main__":
    from moto.server import main

    make_dynamodb_writes_atomic()
    if os.environ.get("PRISM_MOTO_SCAN_LOG"):
        log_scans_to(os.environ["PRISM_MOTO_SCAN_LOG"])
    main()
