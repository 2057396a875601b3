"""How the local moto server's state is written down (prism.dev.moto_state decides when): its
backends pickled by a pickler that handles what moto keeps and plain pickle refuses, in a file
with a checksum, written so that a crash leaves the old snapshot or the new, never half."""

import functools
import io
import os
import pickle
import struct
import tempfile
import threading
import zlib
from collections import defaultdict
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from moto.backends import get_backend
from moto.core.base_backend import backend_lock

_MAGIC = b"PRISM-MOTO-STATE\n"
_HEADER = struct.Struct(">IQ")  # crc32 and length of the payload


# -- pickling moto's backends


def live_backends(service: str) -> list:
    with backend_lock:  # backends are created lazily, by requests on other threads
        return list(get_backend(service).iter_backends())


def pickle_backends(service: str) -> bytes:
    backends = live_backends(service)
    live_tables = {
        id(table) for _, _, backend in backends for table in getattr(backend, "tables", {}).values()
    }
    buffer = io.BytesIO()
    _BackendPickler(buffer, live_tables).dump(backends)
    return buffer.getvalue()


class _BackendPickler(pickle.Pickler):
    """Pickles what moto keeps that plain pickle refuses: locks and conditions (saved as new
    ones), cryptography private keys (as DER), and defaultdicts whose factory is a lambda. Live
    DynamoDB tables lose their items here; those are saved item by item."""

    _LOCKS = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}

    def __init__(self, file, live_tables: set):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.live_tables = live_tables

    def reducer_override(self, obj):
        if type(obj) in self._LOCKS:
            return self._LOCKS[type(obj)], ()
        if isinstance(obj, threading.Condition):
            return threading.Condition, ()
        if type(obj).__module__.startswith("cryptography") and hasattr(obj, "private_bytes"):
            der = obj.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return load_private_key, (der,)
        if isinstance(obj, defaultdict):  # a lambda factory, or a subclass whose __init__ differs
            factory = _picklable_factory(obj.default_factory)
            state = getattr(obj, "__dict__", None) or None
            return new_defaultdict, (type(obj), factory), state, None, iter(obj.items())
        if id(obj) in self.live_tables:
            return _without_items(obj)
        return NotImplemented


def _without_items(table):
    rebuild, args, state, *rest = table.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return (rebuild, args, {**state, "items": defaultdict(dict)}, *rest)


def load_private_key(der: bytes):
    return serialization.load_der_private_key(der, password=None)


def new_defaultdict(cls, factory):
    made = defaultdict.__new__(cls)  # not cls(): moto's subclasses take other arguments
    made.default_factory = factory
    return made


def _picklable_factory(factory):
    """A picklable stand-in for a lambda factory such as `lambda: defaultdict(dict)`."""
    if getattr(factory, "__name__", None) != "<lambda>":
        return factory
    made = factory()
    if type(made) is defaultdict:
        return functools.partial(defaultdict, _picklable_factory(made.default_factory))
    if type(made) in (dict, list, set):
        return type(made)
    raise pickle.PicklingError(f"cannot save a defaultdict whose factory makes {type(made)}")


# -- the file


def write_atomically(path: Path, payload: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a crash leaves the old snapshot or the new,
    never half of one. mkstemp creates the file 0600."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(_MAGIC + _HEADER.pack(zlib.crc32(payload), len(payload)))
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_verified(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise ValueError("it is not a PRISM moto state file")
    header = raw[len(_MAGIC) : len(_MAGIC) + _HEADER.size]
    payload = raw[len(_MAGIC) + _HEADER.size :]
    if len(header) < _HEADER.size:
        raise ValueError("it is damaged: it ends inside its header")
    crc, length = _HEADER.unpack(header)
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise ValueError(f"it is damaged ({len(payload)} of {length} bytes, checksum mismatch)")
    return payload
