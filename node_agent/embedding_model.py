"""The embedding engine: a sentence-transformers model run from its ONNX export (loading,
tokenizing, pooling), and the Batcher that runs concurrent requests' texts through it together.

No HTTP here: node_agent.embedding_server serves this, and benchmarks/embed.py calls the very
same EmbeddingModel methods as its in-process baseline. Only onnxruntime, tokenizers and numpy.

The weights directory is a Hugging Face snapshot in sentence-transformers layout: the graph at
`onnx/model.onnx` (or `model.onnx`), `tokenizer.json`, and optionally `modules.json` (which
modules run after the transformer), the Pooling module's `config.json`,
`sentence_bert_config.json` (max_seq_length) and `config.json`.
"""

import json
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from node_agent.frameworks import ONNX_EXPORTS, TOKENIZER

THREADS_ENV = "PRISM_EMBED_THREADS"  # onnxruntime intra-op threads; unset: its own default
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_TOKENS = 512
MAX_RUN_ROWS = 64  # sentences per session.run: bounds the padded tensor of a huge request
MAX_BATCH = 64  # texts the batcher gathers from waiting requests (a bigger request runs alone)
MAX_WAIT_S = 0.002  # how long the batcher waits for requests already being parsed
# Tokenizers tokenize a whole text before truncating it (a 14 MiB text: 12 s, 2 GB), so texts
# are cut at max_tokens x this many characters first; real text has ~4 characters a token.
CHARS_PER_TOKEN_BOUND = 50
# sentence-transformers' Pooling config keys, in the order it concatenates the poolings.
POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
}
_PAD_TOKENS = ("[PAD]", "<pad>")


class ModelLoadError(Exception):
    """The directory cannot be served; the message says what is missing or wrong."""


@dataclass(frozen=True)
class TokenizedText:
    ids: list[int]
    type_ids: list[int]
    truncated: bool  # the text had more tokens than the model's limit


@dataclass(frozen=True)
class ModelConfig:
    onnx_path: Path
    max_tokens: int
    pooling: tuple[str, ...]  # POOLING_KEYS values; concatenated when several
    normalize: bool


def read_json(path: Path) -> dict | list | None:
    """The file's JSON, None when it does not exist; ModelLoadError when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc


def read_config(directory: Path, truncation: dict | None = None) -> ModelConfig:
    """`truncation`: the loaded tokenizer's truncation settings, if any."""
    onnx_path = next((directory / p for p in ONNX_EXPORTS if (directory / p).is_file()), None)
    if onnx_path is None:
        raise ModelLoadError(f"no ONNX model in {directory} (looked for {', '.join(ONNX_EXPORTS)})")
    pooling, normalize = _read_modules(directory)
    return ModelConfig(onnx_path, _read_max_tokens(directory, truncation), pooling, normalize)


def _read_modules(directory: Path) -> tuple[tuple[str, ...], bool]:
    """(pooling modes, normalize) from modules.json; mean pooling, no normalizing without it."""
    modules = read_json(directory / "modules.json")
    if modules is None:
        return ("mean",), False
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError("modules.json is not a list of modules")
    pooling, normalize = ("mean",), False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = _read_pooling(directory / str(module.get("path", "")) / "config.json")
        elif kind == "Normalize":  # its directory is empty (or absent): the listing is enough
            normalize = True
        elif kind != "Transformer":
            raise ModelLoadError(
                f"modules.json lists {module.get('type')} ({module.get('path')}), which this "
                "server cannot apply (it runs only Transformer, Pooling and Normalize)"
            )
    return pooling, normalize


def _read_pooling(path: Path) -> tuple[str, ...]:
    config = read_json(path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"the Pooling module's {path.parent.name}/config.json is missing")
    if config.get("pooling_mode_weightedmean_tokens"):
        raise ModelLoadError("weighted-mean pooling is not supported")
    modes = tuple(mode for key, mode in POOLING_KEYS.items() if config.get(key))
    if not modes:
        raise ModelLoadError(f"{path.parent.name}/config.json enables no pooling mode")
    return modes


def _read_max_tokens(directory: Path, truncation: dict | None) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's truncation, else
    config.json's max_position_embeddings, else 512; never past the position embeddings."""
    sbert = read_json(directory / "sentence_bert_config.json") or {}
    config = read_json(directory / "config.json") or {}
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    candidates = (
        sbert.get("max_seq_length") if isinstance(sbert, dict) else None,
        truncation.get("max_length") if isinstance(truncation, dict) else None,
        positions,
    )
    limit = next((c for c in candidates if isinstance(c, int) and c > 0), DEFAULT_MAX_TOKENS)
    return min(limit, positions) if isinstance(positions, int) and positions > 0 else limit


def model_name(directory: Path) -> str:
    """The name to show: org/name for a Hugging Face cache snapshot
    (models--org--name/snapshots/<commit>), else the directory's name."""
    directory = directory.resolve()
    repo = directory.parent.parent.name
    if directory.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return directory.name


def threads_from_env() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ModelLoadError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
    return int(value)


def make_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """The one way both the server and the benchmark's baseline build their session."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no optimizer chatter on the agent's log
    # Idle intra-op threads sleep instead of spinning: the request threads (JSON, tokenizing)
    # need those cores between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def pool(hidden: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """Sentence vectors [batch, dim x len(modes)] from token vectors [batch, seq, dim], only
    over the tokens the attention mask keeps (padding is garbage)."""
    weights = mask.astype(hidden.dtype)[:, :, None]
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(np.where(weights > 0, hidden, -1e9).max(axis=1))
        elif mode == "last":
            parts.append(hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1])
        else:
            sums = (hidden * weights).sum(axis=1)
            parts.append(sums / (counts if mode == "mean" else np.sqrt(counts)))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def length_groups(lengths: list[int], max_rows: int = MAX_RUN_ROWS) -> list[list[int]]:
    """Indices grouped for session runs: longest first, a new group when one is full or the
    next text is less than half as long (and 16+ tokens shorter), so little is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for index in order:
        group = groups[-1] if groups else None
        longest = lengths[group[0]] if group else 0
        short = lengths[index] * 2 < longest and longest - lengths[index] >= 16
        if group is None or len(group) >= max_rows or short:
            groups.append([index])
        else:
            group.append(index)
    return groups


class EmbeddingModel:
    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, config: ModelConfig):
        self.session, self.tokenizer, self.config = session, tokenizer, config
        self.max_tokens = config.max_tokens
        self.normalize = config.normalize
        self._feeds = [i.name for i in session.get_inputs() if i.name in TOKEN_INPUTS]
        self._output = session.get_outputs()[0].name
        pad = (tokenizer.padding or {}).get("pad_id")
        tokens = (tokenizer.token_to_id(t) for t in _PAD_TOKENS)
        self.pad_id = pad if pad is not None else next((t for t in tokens if t is not None), 0)
        # We pad per batch ourselves; the tokenizer only truncates, to the model's limit.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=config.max_tokens)
        self.dimensions = self.embed(self.tokenize(["warm up"])).shape[1]

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> "EmbeddingModel":
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelLoadError(f"weights directory {directory} does not exist")
        if not (directory / TOKENIZER).is_file():
            read_config(directory)  # a missing graph is the bigger news
            raise ModelLoadError(f"no {TOKENIZER} in {directory}")
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
        except Exception as exc:  # the Rust side raises its own exception type
            raise ModelLoadError(f"cannot load {TOKENIZER}: {exc}") from exc
        config = read_config(directory, tokenizer.truncation)
        try:
            session = make_session(config.onnx_path, threads)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {config.onnx_path.name}: {exc}") from exc
        unknown = [i.name for i in session.get_inputs() if i.name not in TOKEN_INPUTS]
        if unknown:
            raise ModelLoadError(f"the ONNX graph needs inputs this server cannot give: {unknown}")
        try:
            return cls(session, tokenizer, config)
        except Exception as exc:
            raise ModelLoadError(f"the ONNX graph fails on a test sentence: {exc}") from exc

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        """Token ids, truncated to max_tokens (`truncated` says where that cut anything)."""
        limit, tokenized = self.max_tokens * CHARS_PER_TOKEN_BOUND, []
        for start in range(0, len(texts), MAX_RUN_ROWS):  # a chunk at a time: bounded memory
            chunk = texts[start : start + MAX_RUN_ROWS]
            encodings = self.tokenizer.encode_batch([text[:limit] for text in chunk])
            tokenized += [
                TokenizedText(e.ids, e.type_ids, bool(e.overflowing) or len(text) > limit)
                for e, text in zip(encodings, chunk, strict=True)
            ]
        return tokenized

    def embed(self, texts: list[TokenizedText]) -> np.ndarray:
        """Pooled (not normalized) float32 vectors, one row per text, in order; texts of similar
        length run together (at most MAX_RUN_ROWS a run) so little of each run is padding."""
        groups = length_groups([len(t.ids) for t in texts])
        parts = [self._run([texts[i] for i in group]) for group in groups]
        rows = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        for group, part in zip(groups, parts, strict=True):
            rows[group] = part
        return rows

    def _run(self, texts: list[TokenizedText]) -> np.ndarray:
        width = max(len(t.ids) for t in texts)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, text in enumerate(texts):
            ids[row, : len(text.ids)] = text.ids
            types[row, : len(text.ids)] = text.type_ids
            mask[row, : len(text.ids)] = 1
        tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (output,) = self.session.run([self._output], {n: tensors[n] for n in self._feeds})
        if output.ndim == 3:
            output = pool(output, mask, self.config.pooling)
        elif output.ndim != 2:
            raise ValueError(f"the graph's first output has shape {output.shape}, not 2-D or 3-D")
        return output.astype(np.float32, copy=False)


class BatchFailed(Exception):
    """onnxruntime failed on the batch this request was in (the worker logged why)."""


# -- batching: many requests' texts in one run -----------------------------------------------


@dataclass(eq=False)
class _Job:
    texts: list[TokenizedText]
    done: threading.Event = field(default_factory=threading.Event)
    rows: np.ndarray | None = None
    error: Exception | None = None


class Batcher:
    """Request threads queue tokenized texts; one worker thread embeds whatever is waiting
    (up to MAX_BATCH texts) in one go and hands each request its rows. When a batch fails, its
    requests are retried one by one, so only the request that broke it fails."""

    def __init__(self, embed: Callable[[list[TokenizedText]], np.ndarray]):
        self._embed = embed
        self._lock = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._arriving = 0  # requests being parsed/tokenized: worth a moment's wait
        self.requests = self.batches = self.sentences = 0
        threading.Thread(target=self._work, name="embedding-batcher", daemon=True).start()

    @contextmanager
    def arrival(self) -> Iterator[Callable[[list[TokenizedText]], np.ndarray]]:
        """Announces a request on its way; yields the function that submits its texts."""
        with self._lock:
            self._arriving += 1
        submitted = False

        def submit(texts: list[TokenizedText]) -> np.ndarray:
            nonlocal submitted
            submitted = True
            return self._submit(texts)

        try:
            yield submit
        finally:
            if not submitted:
                with self._lock:
                    self._arriving -= 1
                    self._lock.notify()

    def _submit(self, texts: list[TokenizedText]) -> np.ndarray:
        job = _Job(texts)
        with self._lock:
            self._arriving -= 1
            self._queue.append(job)
            self._queued_texts += len(texts)
            self._lock.notify()
        job.done.wait()
        if job.error is not None:  # a fresh exception each: many threads raise it at once
            raise BatchFailed(str(job.error))
        return job.rows

    def _take(self) -> list[_Job]:
        with self._lock:
            while not self._queue:
                self._lock.wait()
            deadline = time.monotonic() + MAX_WAIT_S
            while self._arriving and self._queued_texts < MAX_BATCH:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._lock.wait(remaining):
                    break
            jobs = [self._queue.popleft()]
            count = len(jobs[0].texts)
            while self._queue and count + len(self._queue[0].texts) <= MAX_BATCH:
                jobs.append(self._queue.popleft())
                count += len(jobs[-1].texts)
            self._queued_texts -= count
            self.requests += len(jobs)
            self.batches += 1
            self.sentences += count
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            self._run(jobs)
            for job in jobs:
                job.done.set()

    def _run(self, jobs: list[_Job]) -> None:
        try:
            rows = self._embed([text for job in jobs for text in job.texts])
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: find it
                for job in jobs:
                    self._run([job])
                return
            traceback.print_exc(file=sys.stderr)
            jobs[0].error = exc
            return
        start = 0
        for job in jobs:
            job.rows, start = rows[start : start + len(job.texts)], start + len(job.texts)
