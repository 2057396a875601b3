"""Getting weights onto the node: one module per kind of source behind `Source` (resolve, then
download), one shared content-addressed cache, and `fetch` choosing between them.

  hf://org/model[@rev]   hf.HfWeights        (huggingface_hub, keyed by commit sha)
  r2:// and s3://        r2.BucketWeights    (boto3, keyed by the objects' ETags)
  https://               https.HttpsWeights  (requests, keyed by sha256 pin, ETag or Last-Modified)
  /local/path            used in place, read-only, never copied
"""

import os
from pathlib import Path

from chalicelib.weights_uri import (
    BucketSource,
    HfSource,
    InvalidWeightsSource,
    LocalSource,
    UrlSource,
    parse_weights_uri,
)
from node_agent.weights.base import Progress, PullError, PullSettings, Source
from node_agent.weights.cache import Pulled, WeightsCache

__all__ = ["Progress", "PullError", "PullSettings", "Pulled", "WeightsCache", "fetch"]


def fetch(
    source: str,
    cache: WeightsCache,
    progress: Progress,
    *,
    env: dict[str, str] | None = None,
    settings: PullSettings = PullSettings(),
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> Pulled:
    try:
        parsed = parse_weights_uri(source, allow_http=True)
    except InvalidWeightsSource as exc:
        raise PullError(f"weights source {exc}") from None
    if isinstance(parsed, LocalSource):
        return Pulled(_local(Path(parsed.path)))
    puller = _puller(parsed, env or {}, settings, allow_patterns, ignore_patterns)
    return cache.get(puller, puller.resolve(), progress)


def _puller(parsed, env, settings, allow_patterns, ignore_patterns) -> Source:
    if isinstance(parsed, HfSource):
        from node_agent.weights.hf import HfWeights  # huggingface_hub is slow to import

        return HfWeights(parsed, env, settings, allow_patterns, ignore_patterns)
    if isinstance(parsed, BucketSource):
        from node_agent.weights.r2 import BucketWeights

        return BucketWeights(parsed, env, settings)
    if isinstance(parsed, UrlSource):
        from node_agent.weights.https import HttpsWeights

        return HttpsWeights(parsed, settings)
    raise PullError("this node agent cannot pull that kind of weights source")


def _local(path: Path) -> Path:
    if not path.exists():
        raise PullError(f"{path} does not exist on this node")
    readable = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, readable):
        raise PullError(f"{path} is not readable by the node agent")
    return path
