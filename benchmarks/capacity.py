"""DynamoDB capacity accounting for benchmarks/scale.py: every DynamoDB call this process makes is
counted with its table, index, partition key and the read or write units DynamoDB would bill.

The units follow DynamoDB's documented rules, from the items' real sizes:
- an item's size is the sum of its attribute names and values (strings as UTF-8, numbers about
  one byte per two digits plus one, lists and maps 3 bytes plus 1 per element);
- a write costs ceil(max(size before, size after) / 1 KB) write units (at least 1; a failed
  conditional write costs the same, and writes no index); in a transaction, twice that;
- a global secondary index entry holds the table's key, the index's key and the projected
  attributes (ALL, KEYS_ONLY, INCLUDE); a write adds ceil(entry / 1 KB) for each index whose
  entry appears, disappears or changes, and two writes when the entry's index key changes
  (delete the old entry, put the new one);
- a read costs ceil(size / 4 KB) read units per item for GetItem and BatchGetItem, over the sum
  of the returned entries for a Query or Scan; half when eventually consistent (an index always
  is).
Sizes before and after a write are read with extra GetItem calls that are not counted.
"""

import math
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from botocore.client import BaseClient
from botocore.exceptions import ClientError

KB = 1024
READ_UNIT_BYTES = 4 * KB
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


def value_size(value: dict) -> int:
    kind, data = next(iter(value.items()))
    if kind in ("S", "B"):
        return len(data.encode() if isinstance(data, str) else data)
    if kind == "N":
        digits = data.lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in data.items())
    if kind in ("SS", "BS"):
        return sum(len(v.encode() if isinstance(v, str) else v) for v in data)
    if kind == "NS":
        return sum(value_size({"N": v}) for v in data)
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: dict | None) -> int:
    return sum(len(name.encode()) + value_size(v) for name, v in (item or {}).items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / KB))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return units if consistent else units / 2


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]  # its hash key first
    projection: str  # ALL | KEYS_ONLY | INCLUDE
    included: tuple[str, ...] = ()

    def entry(self, item: dict | None, table_keys: tuple[str, ...]) -> dict | None:
        """The entry `item` makes in this index: None where the index is sparse for it."""
        if item is None or any(k not in item for k in self.keys):
            return None
        if self.projection == "ALL":
            return dict(item)
        names = {*table_keys, *self.keys, *self.included}
        return {k: v for k, v in item.items() if k in names}


@dataclass(frozen=True)
class Table:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[Index, ...]

    def key_of(self, item: dict) -> dict:
        return {k: item[k] for k in self.keys}


def describe(client, name: str) -> Table:
    table = client.describe_table(TableName=name)["Table"]

    def keys(schema):
        return tuple(k["AttributeName"] for k in sorted(schema, key=lambda k: k["KeyType"]))

    indexes = tuple(
        Index(
            gsi["IndexName"],
            keys(gsi["KeySchema"]),
            gsi["Projection"]["ProjectionType"],
            tuple(gsi["Projection"].get("NonKeyAttributes", [])),
        )
        for gsi in table.get("GlobalSecondaryIndexes", [])
    )
    return Table(name, keys(table["KeySchema"]), indexes)


def key_text(value: dict) -> str:
    return str(next(iter(value.values())))


@dataclass
class Usage:
    """Units on one partition key (table or index), and the entities (table hash keys) under it:
    a key of one entity does not grow with the fleet, a shared one grows linearly."""

    read: float = 0.0
    write: float = 0.0
    entities: set = field(default_factory=set)


class Accounting:
    """Counts DynamoDB calls while installed. `workload(name)` labels what follows, so totals
    can be read per kind of work; nothing is counted while it is None (seeding)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tables: dict[str, Table] = {}
        self.usage: dict[tuple[str, str, str], Usage] = defaultdict(Usage)
        self.calls: Counter = Counter()  # (workload, operation)
        self.write_units: Counter = Counter()  # workload -> units
        self.read_units: Counter = Counter()
        self.scans: Counter = Counter()  # workload -> Scan calls
        self._original = None
        self._workload: str | None = None

    # --- installing ---------------------------------------------------------------------------
    def install(self) -> None:
        original = self._original = BaseClient._make_api_call
        accounting = self

        def counted(client, operation, params):
            if client.meta.service_model.service_name != "dynamodb" or accounting._inside():
                return original(client, operation, params)
            return accounting._call(client, operation, params)

        BaseClient._make_api_call = counted

    def uninstall(self) -> None:
        BaseClient._make_api_call = self._original

    def workload(self, name: str | None) -> None:
        # Process-wide, not per thread: the handlers run their own pools (the metering worker
        # charges 8 at a time), and the kinds of work run one after another.
        self._workload = name

    def current(self) -> str | None:
        return self._workload

    def _inside(self) -> bool:
        return getattr(self._local, "inside", False)

    def _raw(self, client, operation, params):
        self._local.inside = True
        try:
            return self._original(client, operation, params)
        finally:
            self._local.inside = False

    # --- one call -----------------------------------------------------------------------------
    def _call(self, client, operation, params):
        workload = self.current()
        if workload is None:  # seeding and setup: not counted
            return self._raw(client, operation, params)
        with self._lock:
            self.calls[(workload, operation)] += 1
        if operation in WRITES:
            return self._write(client, operation, params, workload)
        response = self._raw(client, operation, params)
        self._read(client, operation, params, response, workload)
        return response

    def table(self, client, name: str) -> Table:
        if name not in self._tables:
            self._tables[name] = self._raw_describe(client, name)
        return self._tables[name]

    def _raw_describe(self, client, name: str) -> Table:
        self._local.inside = True
        try:
            return describe(client, name)
        finally:
            self._local.inside = False

    def _image(self, client, table: Table, key: dict) -> dict | None:
        found = self._raw(
            client, "GetItem", {"TableName": table.name, "Key": key, "ConsistentRead": True}
        )
        return found.get("Item")

    def _write(self, client, operation, params, workload):
        touched = []  # (table, key, item before)
        for name, key, put in _write_targets(operation, params):
            table = self.table(client, name)
            key = key if key is not None else table.key_of(put)
            touched.append((table, key, self._image(client, table, key)))
        factor = 2 if operation == "TransactWriteItems" else 1
        try:
            response = self._raw(client, operation, params)
        except ClientError as exc:
            if _condition_failed(exc):  # billed on the item's size; no index is written
                for table, key, old in touched:
                    entity = key_text(key[table.keys[0]])
                    units = factor * write_units(item_size(old))
                    self._add(table.name, "", entity, entity, write=units, workload=workload)
            raise
        for table, key, old in touched:
            new = self._image(client, table, key)
            self._account_write(table, key, old, new, factor, workload)
        return response

    def _account_write(self, table: Table, key: dict, old, new, factor: int, workload: str):
        entity = key_text(key[table.keys[0]])
        units = factor * write_units(max(item_size(old), item_size(new)))
        self._add(table.name, "", entity, entity, write=units, workload=workload)
        for index in table.indexes:
            before, after = index.entry(old, table.keys), index.entry(new, table.keys)
            if before == after:
                continue
            moved = (
                before is not None
                and after is not None
                and any(before[k] != after[k] for k in index.keys)
            )
            if before is not None and (after is None or moved):
                partition = key_text(before[index.keys[0]])
                units = write_units(item_size(before))
                self._add(table.name, index.name, partition, entity, write=units, workload=workload)
            if after is not None:
                size = max(item_size(after), 0 if moved or before is None else item_size(before))
                partition = key_text(after[index.keys[0]])
                units = write_units(size)
                self._add(table.name, index.name, partition, entity, write=units, workload=workload)

    def _read(self, client, operation, params, response, workload):
        if operation == "GetItem":
            table = self.table(client, params["TableName"])
            key = params["Key"]
            units = read_units(item_size(response.get("Item")), params.get("ConsistentRead", False))
            entity = key_text(key[table.keys[0]])
            self._add(table.name, "", entity, entity, read=units, workload=workload)
        elif operation == "BatchGetItem":
            for name, asked in params["RequestItems"].items():
                table = self.table(client, name)
                found = {
                    key_text(i[table.keys[0]]): i
                    for i in response.get("Responses", {}).get(name, [])
                }
                for key in asked["Keys"]:
                    entity = key_text(key[table.keys[0]])
                    units = read_units(
                        item_size(found.get(entity)), asked.get("ConsistentRead", False)
                    )
                    self._add(name, "", entity, entity, read=units, workload=workload)
        elif operation in ("Query", "Scan"):
            self._read_many(client, operation, params, response, workload)
        elif operation == "TransactGetItems":
            for action in params["TransactItems"]:
                get = action["Get"]
                table = self.table(client, get["TableName"])
                entity = key_text(get["Key"][table.keys[0]])
                self._add(table.name, "", entity, entity, read=2.0, workload=workload)

    def _read_many(self, client, operation, params, response, workload):
        table = self.table(client, params["TableName"])
        index_name = params.get("IndexName", "")
        items = response.get("Items", [])
        consistent = params.get("ConsistentRead", False) and not index_name
        units = read_units(sum(item_size(i) for i in items), consistent)
        if operation == "Scan":
            with self._lock:
                self.scans[workload] += 1
            partition = "(scan)"
        else:
            partition = _queried_key(params, table, index_name)
        entities = {key_text(i[table.keys[0]]) for i in items if table.keys[0] in i}
        usage_key = (table.name, index_name, partition)
        with self._lock:
            usage = self.usage[usage_key]
            usage.read += units
            usage.entities |= entities
            self.read_units[workload] += units

    def _add(self, table, index, partition, entity, *, read=0.0, write=0, workload):
        with self._lock:
            usage = self.usage[(table, index, partition)]
            usage.read += read
            usage.write += write
            usage.entities.add(entity)
            self.read_units[workload] += read
            self.write_units[workload] += write

    def calls_of(self, workload: str) -> int:
        return sum(n for (w, _), n in self.calls.items() if w == workload)


def _write_targets(operation, params):
    """(table, key or None, the item a put writes) for each item a write call touches."""
    if operation == "PutItem":
        yield params["TableName"], None, params["Item"]
    elif operation in ("UpdateItem", "DeleteItem"):
        yield params["TableName"], params["Key"], None
    elif operation == "BatchWriteItem":
        for name, requests in params["RequestItems"].items():
            for request in requests:
                if "PutRequest" in request:
                    yield name, None, request["PutRequest"]["Item"]
                else:
                    yield name, request["DeleteRequest"]["Key"], None
    elif operation == "TransactWriteItems":
        for action in params["TransactItems"]:
            kind, body = next(iter(action.items()))
            if kind == "Put":
                yield body["TableName"], None, body["Item"]
            elif kind in ("Update", "Delete"):
                yield body["TableName"], body["Key"], None
            # ConditionCheck writes nothing (it is billed as a read: left out)


def _condition_failed(exc) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def _queried_key(params, table: Table, index_name: str) -> str:
    """The partition key value a Query's key condition names."""
    hash_name = table.keys[0]
    if index_name:
        hash_name = next(i.keys[0] for i in table.indexes if i.name == index_name)
    names = params.get("ExpressionAttributeNames", {})
    values = params.get("ExpressionAttributeValues", {})
    condition = params.get("KeyConditionExpression", "")
    for clause in condition.split(" AND "):
        left, _, right = clause.strip(" ()").partition(" = ")
        if (
            right
            and (names.get(left.strip(), left.strip()) == hash_name)
            and right.strip() in values
        ):
            return key_text(values[right.strip()])
    return "(unknown)"
