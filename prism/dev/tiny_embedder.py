"""A real, tiny sentence-transformers embedding model, built here rather than downloaded.

`tiny_embedder_files()` returns the files of a Hugging Face repo in sentence-transformers
layout (ONNX export at `onnx/model.onnx`, WordPiece `tokenizer.json`, `modules.json`, pooling
config, ...), keyed by repo-relative path. The graph is small but genuine: token, position and
token-type embeddings, then `layers` residual MLP blocks (MatMul/Add/Tanh), so onnxruntime does
real work and the output depends on every input the graph declares. Each token's output depends
only on that token and its position, so padding never changes the real tokens' vectors.
Deterministic: the same arguments give the same bytes.

    tiny_embedder_files()                                  # 32 dims, one 128-wide block
    tiny_embedder_files(dimensions=384, layers=3)          # MiniLM-sized cost (1536-wide MLPs)
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
COMMON_TEXT = (
    "the of and to a in is it you that he was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find model "
    "embedding server sentence vector search query document text fast slow cat dog"
)
COMMON_WORDS = COMMON_TEXT.split()
# Single characters and "##" continuations let WordPiece spell any ASCII word, so no input is
# all [UNK]: realistic token counts and distinct vectors for distinct texts.
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-_/@#$%&*+=<>[]{}"
ONNX_OPSET, ONNX_IR_VERSION = 17, 8  # IR 8 carries opset 17; onnxruntime 1.31 loads it
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")


def tiny_embedder_files(
    dimensions: int = 32,
    vocab: tuple[str, ...] = (),
    normalize: bool = True,
    pooling: str = "mean",
    layers: int = 1,
    mlp_width: int | None = None,
    max_seq_length: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> dict[str, bytes]:
    """The repo's files. `vocab`: extra words for the tokenizer; `mlp_width`: each block's
    hidden width (default 4 x dimensions, as BERT)."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, not {pooling!r}")
    words = _vocabulary(vocab)
    graph = _graph(
        np.random.default_rng(seed),
        len(words),
        dimensions,
        layers,
        mlp_width or 4 * dimensions,
        max_position_embeddings,
    )
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": dimensions,
        "num_hidden_layers": layers,
        "intermediate_size": mlp_width or 4 * dimensions,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": len(words),
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    return {
        "onnx/model.onnx": graph.SerializeToString(),
        "tokenizer.json": _tokenizer(words).to_str().encode(),
        "config.json": _json(config),
        "modules.json": _json(_modules(normalize)),
        "1_Pooling/config.json": _json(_pooling_config(dimensions, pooling)),
        "config_sentence_transformers.json": _json(
            {"__version__": {"sentence_transformers": "3.0.0"}, "similarity_fn_name": "cosine"}
        ),
        "sentence_bert_config.json": _json(
            {"max_seq_length": max_seq_length, "do_lower_case": False}
        ),
        "README.md": b"A tiny random sentence-transformers model for tests (prism.dev).\n",
    }


def _modules(normalize: bool) -> list[dict]:
    """modules.json: the transformer, its pooling and (maybe) normalization, in order."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:  # sentence-transformers keeps an empty 2_Normalize/; the listing is what counts
        normalizer = "sentence_transformers.models.Normalize"
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": normalizer})
    return modules


def _pooling_config(dimensions: int, pooling: str) -> dict:
    return {
        "word_embedding_dimension": dimensions,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": pooling == "mean_sqrt_len",
    }


def write_tiny_embedder(directory: str | Path, **kwargs) -> Path:
    """Writes `tiny_embedder_files(**kwargs)` under `directory`; returns it."""
    root = Path(directory)
    for relative, content in tiny_embedder_files(**kwargs).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _json(value) -> bytes:
    return json.dumps(value, indent=2).encode()


def _vocabulary(extra: tuple[str, ...]) -> list[str]:
    pieces = [*SPECIAL_TOKENS, *CHARACTERS, *(f"##{c}" for c in CHARACTERS), *COMMON_WORDS]
    pieces += [word.lower() for word in extra]
    return list(dict.fromkeys(pieces))  # unique, in order: ids never depend on hashing


def _tokenizer(words: list[str]) -> Tokenizer:
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tokenizer


def _graph(rng, vocab_size, dimensions, layers, mlp_width, positions) -> onnx.ModelProto:
    """input_ids/attention_mask/token_type_ids [batch, seq] int64 -> last_hidden_state."""
    initializers: list[onnx.TensorProto] = []

    def weights(name: str, *shape: int, scale: float = 1.0) -> str:
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
        initializers.append(numpy_helper.from_array(values, name))
        return name

    def constant(name: str, value, dtype=np.int64) -> str:
        initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    node = helper.make_node
    words = weights("word_embeddings", vocab_size, dimensions)
    types = weights("type_embeddings", 2, dimensions, scale=0.1)
    position_table = weights("position_embeddings", positions, dimensions, scale=0.1)
    nodes = [
        node("Gather", [words, "input_ids"], ["words"]),
        node("Gather", [types, "token_type_ids"], ["types"]),
        node("Shape", ["input_ids"], ["shape"]),
        node("Gather", ["shape", constant("one", 1)], ["seq_len"]),
        node("Range", [constant("zero", 0), "seq_len", "one"], ["position_ids"]),
        node("Gather", [position_table, "position_ids"], ["positions"]),
        node("Add", ["words", "types"], ["words_types"]),
        node("Add", ["words_types", "positions"], ["hidden_0"]),
    ]
    for layer in range(layers):  # hidden += tanh(hidden @ up + up_bias) @ down + down_bias
        up, down, hidden = f"up{layer}", f"down{layer}", f"hidden_{layer}"
        up_weights = weights(f"{up}_weight", dimensions, mlp_width, scale=dimensions**-0.5)
        down_weights = weights(f"{down}_weight", mlp_width, dimensions, scale=mlp_width**-0.5)
        nodes += [
            node("MatMul", [hidden, up_weights], [f"{up}_mm"]),
            node("Add", [f"{up}_mm", weights(f"{up}_bias", mlp_width, scale=0.1)], [f"{up}_pre"]),
            node("Tanh", [f"{up}_pre"], [f"{up}_act"]),
            node("MatMul", [f"{up}_act", down_weights], [f"{down}_mm"]),
            node("Add", [f"{down}_mm", weights(f"{down}_bias", dimensions, scale=0.1)], [down]),
            node("Add", [hidden, down], [f"hidden_{layer + 1}"]),
        ]
    # Padding positions get garbage (+3), as a real encoder's do: pooling must mask them.
    nodes += [
        node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        node("Sub", [constant("one_float", 1.0, np.float32), "mask_float"], ["padding"]),
        node("Mul", ["padding", constant("three", 3.0, np.float32)], ["pad_shift"]),
        node("Unsqueeze", ["pad_shift", constant("last_axis", [-1])], ["pad_shift_3d"]),
        node("Add", [f"hidden_{layers}", "pad_shift_3d"], ["last_hidden_state"]),
    ]
    token_inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dimensions]
    )
    graph = helper.make_graph(nodes, "tiny_embedder", token_inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model
