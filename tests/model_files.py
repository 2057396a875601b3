"""Small files in the real on-disk formats of model weights, for the detection and engine tests."""

import json
import pickle
import struct
import zipfile
from pathlib import Path


def write_safetensors(path: Path) -> Path:
    """A valid safetensors file: u64 little-endian header length, JSON header, tensor bytes."""
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {
        "__metadata__": {"format": "pt"},
        "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def write_gguf(path: Path, magic: bytes = b"GGUF") -> Path:
    # magic, version 3, tensor count 0, metadata key/value count 0
    path.write_bytes(magic + struct.pack("<IQQ", 3, 0, 0))
    return path


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_torch_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:  # torch.save's format since 1.6
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}, protocol=2))
    return path


def transformers_dir(root: Path) -> Path:
    root.mkdir()
    write_json(root / "config.json", {"architectures": ["BertModel"], "model_type": "bert"})
    write_safetensors(root / "model.safetensors")
    return root
