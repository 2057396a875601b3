"""Keeps the moto server's state in a directory, so `prism dev up` finds yesterday's users, keys,
nodes and deployments. persist_state(directory) runs in the moto server process before
moto.server.main(): it loads the saved snapshot, then a daemon thread saves a new one every
`interval` seconds when something changed, and once more at exit.

A snapshot holds the DynamoDB, IAM, STS, SSM, KMS and SQS backends of every account and region,
pickled (a small pickler handles the locks, private keys and lambdas moto keeps), with table items
kept apart: each item is its own small pickle of its DynamoDB JSON, cached, so a second's writes
re-encode only the items they touched and saving 60,000 items is a join and a file write.
Step Functions, Lambda and every other service start empty.

Changes are noticed where they happen: an AWS call that is not a read marks its service changed,
and DynamoDB's put/update/delete_item note the key they wrote. Writes hold one lock, which a
snapshot holds while it copies the state, so no snapshot sees half a write.
"""

import atexit
import functools
import gc
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import moto
from moto.backends import get_backend
from moto.core.base_backend import BackendDict
from moto.core.responses import BaseResponse
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType

from prism.dev.moto_snapshot import live_backends, pickle_backends, read_verified, write_atomically

# Snapshots saved before moto_snapshot.py existed name these here: they must still load.
from prism.dev.moto_snapshot import load_private_key as _load_private_key  # noqa: F401
from prism.dev.moto_snapshot import new_defaultdict as _new_defaultdict  # noqa: F401

log = logging.getLogger("prism.dev.moto_state")

STATE_FILE = "moto-state.pickle"
SERVICES = ("dynamodb", "iam", "sts", "ssm", "kms", "sqs")
FORMAT = 1
_READS = ("Get", "List", "Describe", "Query", "Scan", "BatchGet", "TransactGet", "GenerateDataKey")
_CRYPTO = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateRandom", "GenerateMac", "VerifyMac", "Sign"}
_ITEM_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_state = None


class StateUnreadable(SystemExit):
    """The saved state cannot be loaded. A SystemExit, so the server stops with just this message
    rather than a traceback, and never starts empty as though nothing had been saved."""


def persist_state(directory: Path, interval: float = 1.0) -> None:
    global _state
    if _state is not None:
        raise RuntimeError(f"moto state already persists to {_state.path.parent}")
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # keys and secrets live here
    for leftover in directory.glob(f"{STATE_FILE}.*.tmp"):  # from a crash mid-write
        leftover.unlink()
    _state = _State(directory / STATE_FILE)
    if _state.path.exists():
        _state.restore()
    _watch_writes(_state)
    threading.Thread(
        target=_state.save_every, args=(interval,), name="moto-state", daemon=True
    ).start()
    atexit.register(_state.save_safely)
    if threading.current_thread() is threading.main_thread():  # else only atexit saves at exit
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _save_then(signal.getsignal(signum), _state))


class _State:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()  # held by every write, and by a snapshot while it copies
        self._saving = threading.Lock()  # one snapshot at a time, so none overtakes another
        self._in_save = threading.local()
        self.changed_services: set[str] = set()
        self.changed_items: dict[tuple, set] = defaultdict(set)  # (account, region, table)
        self.reencode_all_items = False
        self._unwritten = False
        self._service_blobs: dict[str, bytes] = {}
        self._item_blobs: dict[tuple, dict] = {}  # (account, region, table) -> {key: blob}

    # -- saving

    def save_every(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self.save_safely()

    def save_safely(self) -> None:
        try:
            self.save()
        except Exception:
            log.exception("could not save the local AWS state to %s", self.path)

    def save(self) -> bool:
        """Write a snapshot if anything changed since the last; True if one was written."""
        if getattr(self._in_save, "active", False):
            return False  # a signal arrived mid-save on this thread: that save completes
        self._in_save.active = True
        try:
            with self._saving:
                with self.lock:
                    snapshot = self._compose()
                if snapshot is None:
                    return False
                try:  # outside the lock: the snapshot is a copy, of bytes
                    write_atomically(self.path, pickle.dumps(snapshot, pickle.HIGHEST_PROTOCOL))
                except BaseException:
                    self._unwritten = True
                    raise
                return True
        finally:
            self._in_save.active = False

    def _compose(self) -> dict | None:
        changed = self.changed_services or self.changed_items or self.reencode_all_items
        if not (changed or self._unwritten):
            return None
        self._unwritten = False
        self._refresh_items()
        for service in sorted(self.changed_services):
            try:
                self._service_blobs[service] = pickle_backends(service)
                self.changed_services.discard(service)
            except RuntimeError as error:  # a long-polling ReceiveMessage changed SQS meanwhile
                log.info("saving %s again next time: %s", service, error)
            except Exception:  # keep saving the rest; this service retries at its next change
                self.changed_services.discard(service)
                log.exception("cannot save %s; its last saved state stays", service)
        return {
            "format": FORMAT,
            "moto": moto.__version__,
            "services": dict(self._service_blobs),
            "items": {table: list(blobs.values()) for table, blobs in self._item_blobs.items()},
        }

    def _refresh_items(self) -> None:
        tables = {
            (account, region, name): table
            for account, region, backend in live_backends("dynamodb")
            for name, table in backend.tables.items()
        }
        if self.reencode_all_items:
            self._item_blobs = {name: _encode_all_items(table) for name, table in tables.items()}
        else:
            for name, keys in self.changed_items.items():
                if name in tables:
                    _reencode_items(tables[name], keys, self._item_blobs.setdefault(name, {}))
            for gone in self._item_blobs.keys() - tables.keys():
                del self._item_blobs[gone]
        self.changed_items.clear()
        self.reencode_all_items = False

    # -- loading

    def restore(self) -> None:
        gc.disable()  # a million small objects: collecting while they come triples the time
        try:
            tables, items = self._load()
        except Exception as error:
            raise StateUnreadable(
                f"cannot load the local AWS state from {self.path}: {type(error).__name__}: "
                f"{error}\nStart afresh with `prism dev up --fresh` (this deletes "
                f"{self.path.parent} and every user, key, node and deployment in it)."
            ) from error
        finally:
            gc.enable()
        print(f"moto state: {tables} tables, {items} items from {self.path}", file=sys.stderr)

    def _load(self) -> tuple[int, int]:
        snapshot = pickle.loads(read_verified(self.path))
        if snapshot.get("format") != FORMAT or snapshot.get("moto") != moto.__version__:
            raise ValueError(
                f"it was saved in format {snapshot.get('format')} by moto "
                f"{snapshot.get('moto')}; this is format {FORMAT}, moto {moto.__version__}"
            )
        for service, blob in snapshot["services"].items():
            for account, region, backend in pickle.loads(blob):
                get_backend(service)[account][region] = backend
        self._service_blobs = dict(snapshot["services"])
        for (account, region, name), blobs in snapshot["items"].items():
            table = get_backend("dynamodb")[account][region].tables.get(name)
            if table is None:  # its table failed to save (that was logged then)
                print(
                    f"moto state: {len(blobs)} items of lost table {name} dropped", file=sys.stderr
                )
                continue
            loaded = self._item_blobs[(account, region, name)] = {}
            for blob in blobs:
                item = _load_item(table, pickle.loads(blob))
                loaded[(item.hash_key, item.range_key)] = blob
        return len(self._item_blobs), sum(map(len, self._item_blobs.values()))


# -- DynamoDB items, each kept as a pickle of its DynamoDB JSON


def _encode_item(item) -> bytes:
    return pickle.dumps(item.to_json()["Attributes"], protocol=pickle.HIGHEST_PROTOCOL)


def _encode_all_items(table) -> dict:
    return {(item.hash_key, item.range_key): _encode_item(item) for item in table.all_items()}


def _reencode_items(table, keys: set, blobs: dict) -> None:
    for hash_key, range_key in keys:
        item = table.get_item(hash_key, range_key)
        if item is None:
            blobs.pop((hash_key, range_key), None)
        else:
            blobs[(item.hash_key, item.range_key)] = _encode_item(item)


def _load_item(table, attributes: dict):
    """Put the key through moto's put_item, then the rest straight into the item: moto sizes the
    whole item again at each attribute it sets, which at 20 attributes costs more than all the
    rest. The item passed those checks when it was first written."""
    key_names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    item = table.put_item({name: attributes[name] for name in key_names})
    dict.update(item.attrs, {name: DynamoType(value) for name, value in attributes.items()})
    return item


def _item_key(table, attributes: dict) -> tuple:
    range_attribute = table.range_key_attr
    hash_key = DynamoType(attributes[table.hash_key_attr])
    return hash_key, DynamoType(attributes[range_attribute]) if range_attribute else None


# -- noticing writes


def _watch_writes(state: _State) -> None:
    BaseResponse.call_action = _noting_calls(BaseResponse.call_action, state)
    for name in ("put_item", "update_item", "delete_item"):
        setattr(DynamoDBBackend, name, _noting_item_writes(getattr(DynamoDBBackend, name), state))
    reset = BackendDict.reset.__func__  # /moto-api/reset empties every backend

    def reset_and_note(cls) -> None:
        with state.lock:
            reset(cls)
            state.changed_services.update(SERVICES)
            state.reencode_all_items = True

    BackendDict.reset = classmethod(reset_and_note)


def _noting_calls(call_action, state: _State):
    @functools.wraps(call_action)
    def call_action_noting_writes(self):
        service = getattr(self, "service_name", None)
        if service not in SERVICES:
            return call_action(self)
        try:
            action = self._get_action() or ""
        except Exception:
            action = ""  # unknown: treat as a write
        if action.startswith(_READS) or action in _CRYPTO | {"Verify"}:
            return call_action(self)
        if action == "ReceiveMessage":  # may wait 20 s for a message: never under the lock
            response = call_action(self)
            if "ReceiptHandle" in str(response):  # it delivered some (idle polls change nothing)
                state.changed_services.add(service)
            return response
        with state.lock:
            succeeded = False
            try:
                response = call_action(self)
                succeeded = not (isinstance(response, tuple) and int(response[0]) >= 400)
                return response
            finally:
                _note_call(state, service, action, succeeded)

    return call_action_noting_writes


def _note_call(state: _State, service: str, action: str, succeeded: bool) -> None:
    if service != "dynamodb":
        state.changed_services.add(service)
    elif action not in _ITEM_WRITES and succeeded:  # e.g. CreateTable, PartiQL, a restore
        state.changed_services.add(service)
        state.reencode_all_items = True


def _noting_item_writes(method, state: _State):
    @functools.wraps(method)
    def write_noting_key(self, *args, **kwargs):
        with state.lock:
            try:
                return method(self, *args, **kwargs)
            finally:
                _note_item(state, self, args, kwargs)

    return write_noting_key


def _note_item(state: _State, backend, args: tuple, kwargs: dict) -> None:
    table_name = args[0] if args else kwargs.get("table_name")
    attributes = args[1] if len(args) > 1 else kwargs.get("item_attrs", kwargs.get("key"))
    table = backend.tables.get(table_name)
    if table is None:
        return  # the write failed: no such table
    try:
        key = _item_key(table, attributes)
    except Exception:  # a malformed key the write rejected too; re-encode all to be sure
        state.reencode_all_items = True
        return
    state.changed_items[(backend.account_id, backend.region_name, table_name)].add(key)


def _save_then(previous, state: _State):
    """A signal handler that saves, then does what the signal did before."""

    def save_then_previous(signum, frame):
        state.save_safely()
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return None

    return save_then_previous
