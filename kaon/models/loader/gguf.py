"""GGUF -> ArchitectureConfig + Hugging Face-named float tensors, through the ``gguf`` package.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md. Tensor names map as

    token_embd  -> embed_tokens      blk.N.attn_{q,k,v,output}  -> layers.N.self_attn.{q,k,v,o}_proj
    output      -> lm_head           blk.N.ffn_{gate,up,down}   -> layers.N.mlp.{gate,up,down}_proj
    output_norm -> norm              blk.N.attn_norm, ffn_norm  -> layers.N.input_layernorm,
                                                                   post_attention_layernorm

llama.cpp's converter permutes the rows of Llama's q/k weights so that the two features rotated
together by RoPE are adjacent (Meta's original interleaved layout). We undo that permutation to get
back Hugging Face's "rotate half" layout, which our RotaryEmbedding uses. Qwen2 and Gemma 3 files
are not permuted.

Gemma 3 has four norms per layer and per-head q/k norms:

    attn_norm -> input_layernorm           post_attention_norm -> post_attention_layernorm
    ffn_norm  -> pre_feedforward_layernorm post_ffw_norm       -> post_feedforward_layernorm
    attn_q_norm, attn_k_norm -> self_attn.q_norm, self_attn.k_norm

llama.cpp's converter stores Gemma's RMSNorm weights as ``1 + w`` (convert_hf_to_gguf.py adds the
1; transformers' GGUF loader subtracts it again), which is the multiplier kaon's Gemma3 keeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kaon.layers.quantization.gguf import NATIVE_INT4_TYPES, Int4Blocks, decode_int4_blocks
from kaon.layers.quantization.gguf_blocks import GGUFBlocks
from kaon.models.architecture import (
    GEMMA3_SLIDING_WINDOW_PATTERN,
    GGUF_ARCHITECTURES,
    ArchitectureConfig,
    gemma3_layer_types,
)

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output": "lm_head", "output_norm": "norm"}


# Tensor types the gguf package dequantizes (gguf 0.18); others are refused by name.
SUPPORTED_GGUF_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
    "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
)  # fmt: skip


def open_gguf(path: str | Path):  # -> gguf.GGUFReader
    """Open a GGUF file (``kaon.gguf_reader.GGUFFileReader``: gguf-py's reader with metadata
    arrays read in bulk; tensor data stays memory-mapped and unread).

    Raises:
        ValueError: naming the file when it is not a readable GGUF: bad magic, a header or tensor
            data cut short (the file's size is given), or a tensor type code the gguf package
            does not know (with the types kaon loads).
    """
    from kaon.gguf_reader import GGUFFileReader

    try:
        return GGUFFileReader(str(path))
    except Exception as error:  # the reader raises ValueError, struct/IndexError on corrupt files
        if "GGMLQuantizationType" in str(error):
            raise ValueError(
                f"{path}: a tensor has an unknown GGUF type ({error}); kaon loads "
                f"{', '.join(SUPPORTED_GGUF_TYPES)}"
            ) from error
        size = Path(path).stat().st_size
        raise ValueError(
            f"{path} is not a valid GGUF file (truncated, or not GGUF at all; {size} bytes): "
            f"{error}"
        ) from error


def read_metadata(reader) -> dict[str, object]:
    """All GGUF key/value fields as plain Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def architecture_from_metadata(metadata: dict[str, object]) -> ArchitectureConfig:
    """Map ``{arch}.*`` GGUF keys to ArchitectureConfig.

    Raises:
        ValueError: naming ``general.architecture`` when it is not a supported Llama family.
    """
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF general.architecture {arch!r} is not supported; kaon runs "
            f"{', '.join(GGUF_ARCHITECTURES)} GGUF files"
        )

    def key(name: str, default: object = None) -> object:
        return metadata.get(f"{arch}.{name}", default)

    num_heads = int(key("attention.head_count"))  # type: ignore[arg-type]
    hidden_size = int(key("embedding_length"))  # type: ignore[arg-type]
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    rope_scaling = None
    if key("rope.scaling.type") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}  # type: ignore[arg-type]
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    extra = _gemma3_metadata(metadata, key) if arch == "gemma3" else {}
    return ArchitectureConfig(
        architecture=GGUF_ARCHITECTURES[arch],  # type: ignore[index]
        hidden_size=hidden_size,
        intermediate_size=int(key("feed_forward_length")),  # type: ignore[arg-type]
        num_hidden_layers=int(key("block_count")),  # type: ignore[arg-type]
        num_attention_heads=num_heads,
        num_key_value_heads=int(key("attention.head_count_kv", num_heads)),  # type: ignore[arg-type]
        vocab_size=int(key("vocab_size", len(tokens))),  # type: ignore[arg-type]
        head_dim=int(key("attention.key_length", hidden_size // num_heads)),  # type: ignore[arg-type]
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),  # type: ignore[arg-type]
        rope_theta=float(key("rope.freq_base", 10000.0)),  # type: ignore[arg-type]
        rope_scaling=rope_scaling,
        max_position_embeddings=int(key("context_length", 2048)),  # type: ignore[arg-type]
        tie_word_embeddings=False,  # decided by load_gguf_tensors (no output.weight -> tied)
        attention_bias=arch == "qwen2",
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),  # type: ignore[arg-type]
        eos_token_ids=[int(eos)] if eos is not None else [],  # type: ignore[arg-type]
        **extra,
    )


def _gemma3_metadata(metadata: dict[str, object], key) -> dict[str, object]:
    """Gemma 3 fields, with llama.cpp's defaults where the file is silent (llama-model.cpp:
    sliding-window pattern 6, local RoPE base 10,000, attention scale 1/sqrt(head_dim) except the
    62-layer 27B model's 1/sqrt(hidden_size / num_heads)).

    Raises:
        ValueError: naming ``gemma3.attn_logit_softcapping`` (not implemented).
    """
    if key("attn_logit_softcapping") is not None:
        raise ValueError("gemma3.attn_logit_softcapping: attention soft-capping is not supported")
    num_layers = int(key("block_count"))  # type: ignore[arg-type]
    hidden_size, num_heads = int(key("embedding_length")), int(key("attention.head_count"))  # type: ignore[arg-type]
    head_dim = int(key("attention.key_length", hidden_size // num_heads))  # type: ignore[arg-type]
    pattern = key("attention.sliding_window_pattern")
    if isinstance(pattern, list):  # per layer: true = sliding
        layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        layer_types = gemma3_layer_types(num_layers, int(pattern or GEMMA3_SLIDING_WINDOW_PATTERN))  # type: ignore[arg-type]
    softcap = key("final_logit_softcapping")
    fields: dict[str, object] = {
        "layer_types": layer_types,
        "sliding_window": int(key("attention.sliding_window", 4096)),  # type: ignore[arg-type]
        "rope_local_theta": float(key("rope.freq_base_swa", 10_000.0)),  # type: ignore[arg-type]
        "query_pre_attn_scalar": hidden_size / num_heads if num_layers == 62 else head_dim,
        "final_logit_softcapping": float(softcap) if softcap is not None else None,  # type: ignore[arg-type]
    }
    return fields


def _hf_name(gguf_name: str, layer_names: dict[str, str] = _LAYER_NAMES) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")  # suffix: weight | bias
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in layer_names:
        return f"layers.{parts[1]}.{layer_names[parts[2]]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    return None


def _is_linear(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith("_proj.weight")


def _unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (interleaved pairs -> rotate-half halves)."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def iter_gguf_tensors(
    reader,
    config: ArchitectureConfig,
    dtype: torch.dtype,
    int4_native: bool = False,
    block_types: tuple[str, ...] = (),
) -> Iterator[tuple[str, torch.Tensor | Int4Blocks | GGUFBlocks]]:
    """Yield (Hugging Face name, dequantized tensor in ``dtype``) for every model tensor.

    ``rope_freqs`` (Llama 3 frequency divisors) is yielded under its own name. With
    ``int4_native``, Q4_0/Q4_1 linear weights are yielded undequantized as ``Int4Blocks``.
    Linear weights, the embedding and the LM head of a type in ``block_types`` are yielded as
    ``GGUFBlocks`` (the file's bytes; Llama q/k rows permuted as whole rows).

    Raises:
        ValueError: naming the tensor whose GGUF type the gguf package cannot dequantize.
    """
    permute = config.architecture in ("LlamaForCausalLM", "MistralForCausalLM")
    gemma = config.architecture == "Gemma3ForCausalLM"
    layer_names = _GEMMA3_LAYER_NAMES if gemma else _LAYER_NAMES
    for tensor in reader.tensors:
        name = (
            "rope_freqs"
            if tensor.name == "rope_freqs.weight"
            else _hf_name(tensor.name, layer_names)
        )
        if name is None:
            continue
        type_name = tensor.tensor_type.name
        if type_name in block_types and (_is_linear(name) or name == "embed_tokens.weight"):
            num_columns = int(tensor.shape[0])
            data = read_tensor_bytes(reader, tensor).reshape(int(tensor.shape[1]), -1)
            blocks = GGUFBlocks(type_name, data, num_columns)
            heads = {"q_proj.weight": config.num_attention_heads,
                     "k_proj.weight": config.num_key_value_heads}.get(name[-13:])  # fmt: skip
            if permute and heads:
                blocks = blocks.map_rows(lambda rows, heads=heads: _unpermute(rows, heads))
            yield name, blocks
            continue
        if int4_native and _is_linear(name) and type_name in NATIVE_INT4_TYPES:
            blocks = decode_int4_blocks(tensor.data, tensor.tensor_type.name)
            heads = {"q_proj.weight": config.num_attention_heads,
                     "k_proj.weight": config.num_key_value_heads}.get(name[-13:])  # fmt: skip
            if permute and heads:  # whole rows of blocks move, as the float rows would
                blocks = blocks.map_rows(lambda rows, heads=heads: _unpermute(rows, heads))
            yield name, blocks
            continue
        array = _dequantize(reader, tensor, tensor.data)
        array = array.reshape(tuple(reversed([int(d) for d in tensor.shape])))
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute(array, config.num_attention_heads)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _unpermute(array, config.num_key_value_heads)
        # Copy: F32 tensors are read-only views of the memory-mapped file.
        yield name, torch.from_numpy(np.array(array, dtype=np.float32)).to(dtype)


def read_tensor_bytes(
    reader, tensor, first_row: int = 0, num_rows: int | None = None
) -> np.ndarray:
    """Rows ``first_row`` .. ``first_row + num_rows`` (default: all) of a tensor's bytes as a new
    writable uint8 array [num_rows * row_bytes], read from the file (not through the reader's
    memory map: mapped pages stay in the process's RSS while the map lives, so a loader copying
    them would hold the file twice at its peak). A row is ``tensor.shape[0]`` values.

    Raises:
        ValueError: naming the file and tensor when the file ends before the rows do.
    """
    total_rows = int(np.prod([int(d) for d in tensor.shape[1:]]))
    row_bytes = int(tensor.n_bytes) // total_rows
    num_rows = total_rows - first_row if num_rows is None else min(num_rows, total_rows - first_row)
    data = np.empty(num_rows * row_bytes, dtype=np.uint8)
    path = reader.data.filename
    with open(path, "rb", buffering=0) as file:
        file.seek(int(tensor.data_offset) + first_row * row_bytes)
        read = file.readinto(memoryview(data))
    if read != data.nbytes:
        raise ValueError(
            f"{path}: tensor {tensor.name} is cut short ({read} of {data.nbytes} bytes)"
        )
    return data


def _dequantize(reader, tensor, data: np.ndarray) -> np.ndarray:
    """``data`` (all or some rows of ``tensor.data``) as float32.

    Raises:
        ValueError: naming the file, the tensor and its type when the type cannot be loaded.
    """
    from gguf.quants import dequantize

    # A plain ndarray view of the mapped bytes: gguf's dequantize slices the data in 16-row
    # groups, and every slice of an np.memmap runs memmap's Python __array_finalize__ (1.5 s of
    # a 10 s default-model load).
    data = data.view(np.ndarray)
    try:
        return dequantize(data, tensor.tensor_type)
    except NotImplementedError as error:
        source = getattr(reader.data, "filename", "GGUF file")
        raise ValueError(
            f"{source}: tensor {tensor.name} has type {tensor.tensor_type.name}, which kaon "
            f"cannot load ({error}); supported types: {', '.join(SUPPORTED_GGUF_TYPES)}"
        ) from error


def iter_gguf_row_chunks(
    reader, config: ArchitectureConfig, dtype: torch.dtype, chunk_bytes: int = 16 << 20
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield (Hugging Face name, first row, float rows in ``dtype``) so that a loader can copy
    each piece into place and drop it: at most about ``chunk_bytes`` of float32 rows are
    dequantized at a time (a 262,144 x 640 embedding is 671 MB as float32). Tensors whose rows
    are permuted (Llama q/k) and 1-D tensors come whole, from ``iter_gguf_tensors``.

    Raises:
        ValueError: as ``iter_gguf_tensors``.
    """
    permute = config.architecture in ("LlamaForCausalLM", "MistralForCausalLM")
    layer_names = (
        _GEMMA3_LAYER_NAMES if config.architecture == "Gemma3ForCausalLM" else _LAYER_NAMES
    )
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, layer_names)
        whole = name is None or len(tensor.shape) != 2
        whole = whole or permute and name.endswith(("q_proj.weight", "k_proj.weight"))
        if whole:  # rope_freqs, norms, biases, permuted q/k: small or reordered
            for item_name, value in iter_gguf_tensors(_OneTensor(reader, tensor), config, dtype):
                yield item_name, 0, value  # type: ignore[misc]
            continue
        num_rows, num_columns = int(tensor.shape[1]), int(tensor.shape[0])
        step = max(1, chunk_bytes // (4 * num_columns))
        for start in range(0, num_rows, step):
            raw = read_tensor_bytes(reader, tensor, start, step)
            rows = _dequantize(reader, tensor, raw.reshape(min(step, num_rows - start), -1))
            yield name, start, torch.from_numpy(rows.reshape(-1, num_columns)).to(dtype)


class _OneTensor:
    """A reader stand-in holding one of ``reader``'s tensors (for ``iter_gguf_tensors``)."""

    def __init__(self, reader, tensor) -> None:
        self.data, self.tensors = reader.data, [tensor]
