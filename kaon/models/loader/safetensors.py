"""Hugging Face model directory: config.json + *.safetensors (+ generation_config.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from kaon.models.architecture import ArchitectureConfig

REQUIRED_FILES = ("config.json",)


def read_hf_config(directory: Path) -> dict:
    """config.json as a dict.

    Raises:
        FileNotFoundError: naming the missing file and what a model directory must hold.
        ValueError: when config.json is not valid JSON.
    """
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no config.json; a model directory needs config.json, *.safetensors "
            "and tokenizer.json"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_generation_defaults(directory: Path) -> dict:
    """generation_config.json (temperature, top_p, top_k, eos ids...) or {} when absent."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def iter_safetensors(
    directory: Path, config: ArchitectureConfig, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name without the ``model.`` prefix, tensor in ``dtype``) from every shard.

    Gemma 3's RMSNorm weights ``w`` are yielded as the multiplier ``1 + w`` (computed in float32)
    that ``kaon.models.gemma3`` keeps, as GGUF files store them.

    Raises:
        FileNotFoundError: when the directory holds no *.safetensors file.
        ValueError: naming the shard whose header is corrupt.
    """
    from safetensors import safe_open

    shift_norms = config.architecture == "Gemma3ForCausalLM"
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no *.safetensors weights")
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as error:
            raise ValueError(f"{file} is not a valid safetensors file: {error}") from error
        with handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                short = name.removeprefix("model.")
                tensor = handle.get_tensor(name)
                if shift_norms and short.endswith("norm.weight"):
                    tensor = tensor.float() + 1.0
                yield short, tensor.to(dtype)
