"""The metering queue (SQS): batched sends, and delayed sends for budget stops."""

import json
from functools import cached_property

MAX_BATCH = 10  # SendMessageBatch's limit
MAX_DELAY_SECONDS = 900  # SQS's limit


class WorkQueue:
    def __init__(self, sqs, name: str):
        self._sqs = sqs
        self._name = name
        self.requests = 0  # SQS calls made (the benchmark reports them)

    @cached_property
    def url(self) -> str:
        return self._sqs.get_queue_url(QueueName=self._name)["QueueUrl"]

    def send_all(self, bodies: list[dict]) -> None:
        for start in range(0, len(bodies), MAX_BATCH):
            chunk = bodies[start : start + MAX_BATCH]
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(chunk)]
            result = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            self.requests += 1
            if result.get("Failed"):
                failed = [chunk[int(f["Id"])] for f in result["Failed"]]
                raise RuntimeError(f"SQS refused {len(failed)} messages to {self._name}")

    def send_later(self, body: dict, delay_seconds: int) -> None:
        self._sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(body),
            DelaySeconds=max(0, min(MAX_DELAY_SECONDS, delay_seconds)),
        )
        self.requests += 1
