"""Splitting a stream into the batches AWS APIs take (100 keys a BatchGetItem, 10 messages a
SendMessageBatch), without holding more than one batch."""

from collections.abc import Iterable, Iterator
from itertools import islice


def chunked(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
