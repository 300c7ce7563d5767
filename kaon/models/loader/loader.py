"""load_model: a path (or None for the default) -> weights on the device, tokenizer, config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kaon.distributed.communication import TensorParallelGroup
from kaon.distributed.parallel_state import building_with
from kaon.layers.quantization import quantize_model, take_int4_blocks
from kaon.layers.quantization import validate as validate_quantization
from kaon.models.architecture import ArchitectureConfig
from kaon.models.loader.default_model import DEFAULT_MODEL_NAME, default_model_path
from kaon.models.registry import SINGLE_RANK_ARCHITECTURES, model_class
from kaon.startup import release_free_heap, timed_step

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # LlamaForCausalLM | Gemma3ForCausalLM (kaon.models.registry)
    config: ArchitectureConfig  # the full model's, also on a tensor-parallel rank
    tokenizer: object  # kaon.tokenizer.Tokenizer
    name: str  # served model name: the file or directory stem
    path: str
    generation_defaults: dict = field(default_factory=dict)


def load_model(
    path: str | None,
    dtype: torch.dtype,
    device: torch.device,
    *,
    tp_group: TensorParallelGroup | None = None,
    quantization: str = "none",
    group_size: int = 32,
) -> LoadedModel:
    """Load a .gguf file or a Hugging Face directory; ``None`` loads the default model.

    With ``tp_group`` only this rank's shard is kept (``tp_shard``) and the model is built from
    the rank's local ArchitectureConfig (``model.config``). ``quantization`` / ``group_size``:
    weight-only scheme applied to the linear layers after loading (``kaon.layers.quantization``);
    GGUF Q4_0/Q4_1 tensors map natively to int4 group 32 (single rank only: a tensor-parallel
    rank dequantizes, takes its shard, then quantizes it).

    Raises:
        FileNotFoundError: the path or a required file in it does not exist.
        ValueError: unsupported architecture, corrupt header, or unknown file kind; naming
            ``tensor_parallel_size`` when the model cannot be split over the group.
    """
    if path is None:
        path = default_model_path()
        name = DEFAULT_MODEL_NAME
    else:
        name = Path(path).name.removesuffix(".gguf")
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    _log_reading(target)
    if target.is_dir():
        quantization = "none" if quantization == "auto" else quantization
        return _load_hf_dir(target, name, dtype, device, tp_group, (quantization, group_size))
    if target.suffix != ".gguf":
        raise ValueError(
            f"model {path} is neither a .gguf file nor a Hugging Face model directory "
            "(config.json + *.safetensors + tokenizer.json)"
        )
    return _load_gguf(target, name, dtype, device, tp_group, (quantization, group_size))


def _log_reading(target: Path) -> None:
    files = sorted(target.glob("*.safetensors")) if target.is_dir() else [target]
    num_bytes = sum(file.stat().st_size for file in files)
    kind = "safetensors" if target.is_dir() else "GGUF"
    logger.info("reading %s (%s, %.0f MiB)", target, kind, num_bytes / 2**20)


def read_architecture(path: str | None) -> ArchitectureConfig:
    """The model's ArchitectureConfig (GGUF metadata or config.json) without reading weights;
    ``None``: the default model. Used to validate options before ranks are started.

    Raises:
        FileNotFoundError, ValueError: as ``load_model``.
    """
    target = Path(default_model_path() if path is None else path)
    if not target.exists():
        raise FileNotFoundError(f"model path {target} does not exist")
    if target.is_dir():
        from kaon.models.loader.safetensors import read_hf_config

        return ArchitectureConfig.from_hf_config(read_hf_config(target))
    from kaon.models.loader.gguf import open_gguf, read_metadata

    return _gguf_architecture(target, read_metadata(open_gguf(target)))


def _gguf_architecture(path: Path, metadata: dict[str, object]) -> ArchitectureConfig:
    """architecture_from_metadata, its errors prefixed with the file's path."""
    from kaon.models.loader.gguf import architecture_from_metadata

    try:
        return architecture_from_metadata(metadata)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _load_gguf(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    tp_group: TensorParallelGroup | None,
    quant: tuple[str, int],
) -> LoadedModel:
    from kaon.models.loader.gguf import iter_gguf_tensors, open_gguf, read_metadata
    from kaon.tokenizer import Tokenizer

    with timed_step("GGUF metadata"):
        reader = open_gguf(path)
        metadata = read_metadata(reader)
    config = _gguf_architecture(path, metadata)
    config.tie_word_embeddings = not any(t.name == "output.weight" for t in reader.tensors)
    with timed_step("tokenizer"):
        tokenizer = Tokenizer.from_gguf(metadata)
    del metadata  # the token arrays: tens of MB of str objects for a 262k vocabulary
    release_free_heap()  # and the tokenizer build's temporaries, before the weights arrive
    block_types = _native_block_types(reader, device, tp_group) if quant[0] == "auto" else ()
    if quant[0] == "auto":
        quant = ("auto" if block_types else "none", quant[1])
    # Q4_0/Q4_1 blocks go straight to int4 group 32 (one rank: shards are cut from floats).
    int4_native = quant == ("int4", 32) and tp_group is None
    with timed_step("weights"):
        if tp_group is None and not int4_native and not block_types:  # tensor by tensor
            model = _build_streaming(config, reader, dtype, device, quant)
        else:
            tensors = iter_gguf_tensors(reader, config, dtype, int4_native, block_types)
            tensors = _shard(tensors, config, tp_group)
            freq_divisors = tensors.pop("rope_freqs", None)
            model = _build(config, tensors, dtype, device, freq_divisors, tp_group, quant)
            del tensors
        release_free_heap()  # the freed dequantized pieces, back to the OS
    return LoadedModel(model, config, tokenizer, name, str(path))


def _native_block_types(
    reader, device: torch.device, tp_group: TensorParallelGroup | None
) -> tuple[str, ...]:
    """``--quantization auto`` on a GGUF: the file's block types that run natively (C++ kernels,
    one CPU rank); logs the types that will be dequantized instead. Empty: dequantize all."""
    from collections import Counter

    from kaon.kernels.gguf_matmul import KERNEL_TYPES, load_kernels

    counts = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    quantized = sorted(t for t in counts if t not in ("F32", "F16", "BF16"))
    if not quantized:
        return ()
    reason = None
    if device.type != "cpu":
        reason = f"no GGUF block kernels on {device.type}"
    elif tp_group is not None:
        reason = "tensor parallelism shards float weights"
    elif load_kernels() is None:
        reason = "the C++ GGUF kernels are unavailable (KAON_DISABLE_CPP_OPS or no build)"
    if reason is not None:
        logger.info("quantization auto: %s; dequantizing %s", reason, ", ".join(quantized))
        return ()
    native = tuple(t for t in quantized if t in KERNEL_TYPES)
    for type_name in quantized:
        if type_name not in KERNEL_TYPES:
            logger.info("quantization auto: GGUF type %s has no kernel; dequantizing its %d "
                        "tensors", type_name, counts[type_name])  # fmt: skip
    logger.info("quantization auto: running %s blocks natively", ", ".join(native))
    return native


def _load_hf_dir(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    tp_group: TensorParallelGroup | None,
    quant: tuple[str, int],
) -> LoadedModel:
    from kaon.models.loader.safetensors import (
        iter_safetensors,
        read_generation_defaults,
        read_hf_config,
    )
    from kaon.tokenizer import Tokenizer

    config = ArchitectureConfig.from_hf_config(read_hf_config(path))
    tensors = _shard(iter_safetensors(path, config, dtype), config, tp_group)
    if "lm_head.weight" not in tensors:
        config.tie_word_embeddings = True
    model = _build(config, tensors, dtype, device, None, tp_group, quant)
    tokenizer = Tokenizer.from_hf_dir(path)
    defaults = read_generation_defaults(path)
    return LoadedModel(model, config, tokenizer, name, str(path), defaults)


def _build_streaming(
    config: ArchitectureConfig,
    reader,
    dtype: torch.dtype,
    device: torch.device,
    quant: tuple[str, int],
) -> torch.nn.Module:
    """``_build`` for one rank without native int4 blocks: allocate the model, then dequantize
    and copy the GGUF's tensors into it a piece at a time (``kaon.models.loader.stream``)."""
    from kaon.models.loader.gguf import iter_gguf_row_chunks
    from kaon.models.loader.stream import stream_into

    validate_quantization(*quant)
    with torch.device("meta"), building_with(None):
        model = model_class(config)(config)
    model = model.to_empty(device=device).to(dtype)
    freq_divisors = stream_into(model, config, iter_gguf_row_chunks(reader, config, dtype))
    model.build_rotary(freq_divisors)
    model.to(device)
    model.prepare_for_inference()
    quantize_model(model, *quant)
    return model.eval()


def _shard(tensors, config: ArchitectureConfig, tp_group: TensorParallelGroup | None) -> dict:
    """name -> tensor, sliced to this rank's shard under tensor parallelism."""
    if tp_group is None:
        return dict(tensors)
    from kaon.models.loader.tp_shard import plan_for, shard_tensors

    shard = plan_for(config, tp_group.rank, tp_group.world_size)
    return dict(shard_tensors(tensors, config, shard))


def _build(
    config: ArchitectureConfig,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    freq_divisors: torch.Tensor | None,
    tp_group: TensorParallelGroup | None = None,
    quant: tuple[str, int] = ("none", 32),
) -> torch.nn.Module:
    """Create the model and fill it, fusing q/k/v and gate/up into one weight each, then
    quantize its linear weights (``quant``: scheme, group size). Empties ``tensors`` (each
    piece is freed once it is in the model)."""
    validate_quantization(*quant)
    full_config = config
    if tp_group is not None and config.architecture in SINGLE_RANK_ARCHITECTURES:
        raise ValueError(
            f"tensor_parallel_size: {config.architecture} runs on one rank only "
            f"(got {tp_group.world_size})"
        )
    if tp_group is not None:
        from kaon.models.loader.tp_shard import local_config, plan_for

        config = local_config(config, plan_for(config, tp_group.rank, tp_group.world_size))
    cls = model_class(config)
    with torch.device("meta"), building_with(tp_group):
        model = cls(config)
    params = _fuse(full_config, tensors, getattr(cls, "layer_norms", _LLAMA_LAYER_NORMS))
    tensors.clear()  # params holds what is used
    native = take_int4_blocks(model, params)  # their float parameters are never allocated
    model = model.to_empty(device=device).to(dtype)
    # Buffers were on meta: rebuild the RoPE tables for real.
    model.build_rotary(freq_divisors)
    model.to(device)
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(params))
    if missing:
        raise ValueError(f"model weights are missing tensors: {', '.join(missing[:5])}")
    with torch.no_grad():
        for param_name, value in params.items():
            if param_name not in own:
                continue  # lm_head.weight of a tied checkpoint: embed_tokens serves
            parts = value if isinstance(value, list) else [value]
            shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
            if own[param_name].shape != shape:
                raise ValueError(
                    f"tensor {param_name} has shape {shape}, "
                    f"expected {tuple(own[param_name].shape)}"
                )
            torch.cat(parts, dim=0, out=own[param_name])  # fused weights written once
    model.prepare_for_inference()
    quantize_model(model, *quant, prequantized=native)
    return model.eval()


_LLAMA_LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")


def _fuse(
    config: ArchitectureConfig,
    tensors: dict[str, torch.Tensor],
    layer_norms: tuple[str, ...] = _LLAMA_LAYER_NORMS,
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Parameter name -> tensor, or the parts a fused parameter is concatenated from (dim 0)."""
    params: dict[str, torch.Tensor | list[torch.Tensor]] = {}
    for name in ("embed_tokens", "lm_head"):
        if f"{name}.weight" in tensors:
            params[name] = tensors[f"{name}.weight"]
    params["norm.weight"] = tensors["norm.weight"]
    for i in range(config.num_hidden_layers):
        prefix = f"layers.{i}"

        def take(suffix: str, prefix: str = prefix) -> torch.Tensor:
            key = f"{prefix}.{suffix}"
            if key not in tensors:
                raise ValueError(f"model weights are missing tensor {key}")
            return tensors[key]

        attn, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        params[f"{attn}.qkv_proj"] = [take(f"self_attn.{p}_proj.weight") for p in "qkv"]
        if config.attention_bias:
            params[f"{attn}.qkv_bias"] = [take(f"self_attn.{p}_proj.bias") for p in "qkv"]
        params[f"{attn}.o_proj"] = take("self_attn.o_proj.weight")
        params[f"{mlp}.gate_up_proj"] = [take("mlp.gate_proj.weight"), take("mlp.up_proj.weight")]
        params[f"{mlp}.down_proj"] = take("mlp.down_proj.weight")
        for norm in layer_norms:
            params[f"{prefix}.{norm}.weight"] = take(f"{norm}.weight")
    return params
