"""What framework pulled weights are in (`framework: "auto"`), and a command's placeholders;
node_agent.engines picks what serves them when there is no command.

Detection reads only names, file headers and small JSON files: weights can be hundreds of GB.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

MAX_JSON_BYTES = 8 * 1024 * 1024  # configs and safetensors headers are KBs; more is not a model
ENTRY_POINTS = ("serve.py", "app.py", "server.py", "main.py")
CONTAINER_WEIGHTS = "/weights"  # where a container finds the weights (see the README)
# Where a repo keeps its ONNX export (Hugging Face's `onnx/` folder, or the top), and the
# tokenizer that goes with it: what the built-in embedding server loads.
ONNX_EXPORTS = ("onnx/model.onnx", "model.onnx")
TOKENIZER = "tokenizer.json"
# In a command, replaced by the agent on either runtime: exec arrays are never shell-expanded.
WEIGHTS_PLACEHOLDER, PORT_PLACEHOLDER = "{weights}", "{port}"

Files = Mapping[str, Path]  # top-level file name -> path, sorted by name


class FrameworkError(Exception):
    """Nothing can serve these weights without a command; the message says what to pass."""


@dataclass(frozen=True)
class Detection:
    framework: str
    evidence: str  # the file(s) that decided it, relative to the weights dir


# --- reading just enough of a file --------------------------------------------------------


def _head(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # also covers bad UTF-8
        return None


def read_json(path: Path) -> object:
    """The parsed file, or None when unreadable, not JSON or too big to be a config."""
    data = _head(path, MAX_JSON_BYTES + 1)
    return None if len(data) > MAX_JSON_BYTES else _json(data)


def _is_json_object(path: Path) -> bool:
    return isinstance(read_json(path), dict)


def _is_safetensors(path: Path) -> bool:
    """8-byte little-endian header length, then that many bytes of a JSON object."""
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8).ljust(8, b"\xff"), "little")
            header = f.read(length) if length <= MAX_JSON_BYTES else b""
    except OSError:
        return False
    return len(header) == length and isinstance(_json(header), dict)


def is_gguf(path: Path) -> bool:
    return _head(path, 4) == b"GGUF"


def _is_torch(path: Path) -> bool:
    # torch.save writes a zip archive (>= 1.6) or a pickle (protocol 2+ starts with 0x80).
    head = _head(path, 4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _is_nonempty(path: Path) -> bool:
    # ONNX is a bare protobuf with no magic number; an empty file is the one sure non-model.
    return _head(path, 1) != b""


# --- detectors: each returns the evidence, or None ----------------------------------------

Check = Callable[[Path], bool]


def _first(files: Files, patterns: tuple[str, ...], check: Check) -> str | None:
    """The first file whose lower-cased name matches a pattern and whose contents pass `check`."""
    for pattern in patterns:
        for name, path in files.items():
            if fnmatchcase(name.lower(), pattern) and check(path):
                return name
    return None


def _sentence_transformers(files: Files) -> str | None:
    for name, kind in (("modules.json", list), ("config_sentence_transformers.json", dict)):
        if name in files and isinstance(read_json(files[name]), kind):
            return name
    return None


_TRANSFORMERS_WEIGHTS: tuple[tuple[str, Check], ...] = (
    ("model.safetensors.index.json", _is_json_object),  # sharded: the index names the shards
    ("*.safetensors", _is_safetensors),
    ("pytorch_model*.bin", _is_torch),
)


def _transformers(files: Files) -> str | None:
    config = read_json(files["config.json"]) if "config.json" in files else None
    if not (isinstance(config, dict) and {"architectures", "model_type"} & config.keys()):
        return None
    for pattern, check in _TRANSFORMERS_WEIGHTS:
        if weights := _first(files, (pattern,), check):
            return f"config.json + {weights}"
    return None


def _file_format(patterns: tuple[str, ...], check: Check) -> Callable[[Files], str | None]:
    return lambda files: _first(files, patterns, check)


# Most specific first: a transformers directory also holds bare safetensors, and so on down.
_DETECTORS: tuple[tuple[str, Callable[[Files], str | None]], ...] = (
    ("sentence-transformers", _sentence_transformers),
    ("transformers", _transformers),
    ("gguf", _file_format(("*.gguf",), is_gguf)),
    ("onnx", _file_format(("*.onnx",), _is_nonempty)),
    ("safetensors", _file_format(("*.safetensors",), _is_safetensors)),
    ("torch", _file_format(("*.pt", "*.pth", "*.bin"), _is_torch)),
)


def _custom_evidence(files: Files) -> str:
    if entry := next((name for name in ENTRY_POINTS if name in files), None):
        return entry
    if not files:
        return "no files at the top level"
    names = list(files)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"no recognised model files among: {shown}"


def detect_framework(weights_dir: Path) -> Detection:
    """The framework of a weights directory (or single file), and the file(s) that showed it."""
    path = Path(weights_dir)
    if path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = {p.name: p for p in sorted(path.iterdir()) if p.is_file()}
    else:
        raise FrameworkError(f"weights path {path} does not exist")
    for framework, detector in _DETECTORS:
        if evidence := detector(files):
            return Detection(framework, evidence)
    return Detection("custom", _custom_evidence(files))


# --- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hint:
    example: tuple[str, ...]  # "{file}" becomes the detected file (or `file`) under {weights}
    note: str
    file: str = ""
    reason: str = ""  # defaults to "no built-in server for <framework> is installed"


_W, _P = WEIGHTS_PLACEHOLDER, PORT_PLACEHOLDER
# The kinds of weights no engine serves unasked (node_agent.engines): what command to pass.
_HINTS: dict[str, _Hint] = {
    "transformers": _Hint(  # a task head no engine serves (token classification, ...)
        ("python", "serve.py", "--model", _W, "--port", _P),
        "your server for this model's task head, e.g. a transformers pipeline behind HTTP",
    ),
    "safetensors": _Hint(
        ("python", "serve.py", "--weights", "{file}", "--port", _P),
        "bare safetensors hold tensors but no architecture, so your code must build the model",
        "model.safetensors",
    ),
    "torch": _Hint(
        ("python", "serve.py", "--checkpoint", "{file}", "--port", _P),
        "your PyTorch server that loads the checkpoint",
        "model.pt",
    ),
    "custom": _Hint(
        ("python", "{file}"),
        "pass the command that starts your server; it must listen on {port} (also in $PORT)",
        "serve.py",
        reason="the agent cannot guess how to start custom code",
    ),
}


def _detected(framework: str, weights_dir: Path | None) -> tuple[str, str] | None:
    """(evidence, evidence file or "") when detection on `weights_dir` agrees with `framework`."""
    if weights_dir is None or not Path(weights_dir).exists():
        return None
    detection = detect_framework(weights_dir)
    if detection.framework != framework:
        return None
    path = Path(weights_dir)
    is_file = path.is_file() or (path / detection.evidence).is_file()
    return detection.evidence, detection.evidence if is_file else ""


def no_server_error(framework: str, weights_dir: Path | None) -> FrameworkError:
    """Nothing serves this framework unasked: what command to pass (node_agent.engines)."""
    hint = _HINTS.get(framework, _HINTS["custom"])
    evidence, file = _detected(framework, weights_dir) or ("", "")
    file = f"{_W}/{file or hint.file}"
    example = json.dumps([file if arg == "{file}" else arg for arg in hint.example])
    subject = f"detected framework '{framework}' ({evidence})" if evidence else ""
    reason = hint.reason or f"no engine serves {framework} weights without one"
    return FrameworkError(
        f"{subject or f'framework {framework!r}'} but no command was given and {reason}; "
        f"pass command, e.g. {example} ({hint.note})"
    )


def fill_placeholders(command, weights: Path | str | None, port: int) -> list[str]:
    """{weights} and {port} anywhere in the arguments, as this runtime sees them (the host's
    weights path and port for a process; /weights and the container port in a container)."""
    if weights is None and any(WEIGHTS_PLACEHOLDER in arg for arg in command):
        raise FrameworkError("the command uses {weights} but this deployment has no weights_source")
    values = {WEIGHTS_PLACEHOLDER: str(weights), PORT_PLACEHOLDER: str(port)}
    filled = []
    for arg in command:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        filled.append(arg)
    return filled
