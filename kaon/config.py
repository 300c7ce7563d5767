"""Engine configuration: one plain dataclass per concern, joined in EngineConfig.

Every user option carries its default and a help line in ``metadata``; the CLI builds its flags
from these fields (``add_cli_args``) so names stay identical to vLLM's in Python, CLI and server.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kaon.spec_decode.config import SpeculativeConfig


def _opt(default: Any, help_text: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **kwargs})


@dataclass
class ModelConfig:
    """Which model and how its weights are held."""

    model: str | None = _opt(
        None, "a .gguf file or a Hugging Face model directory (default: SmolLM2-135M-Instruct Q4_1)"
    )
    dtype: str = _opt("auto", "activation/weight dtype: auto (float32 on CPU), float32, bfloat16")
    max_model_len: int | None = _opt(
        None, "context length in tokens (prompt + output); default: the model's, at most 8192"
    )
    seed: int = _opt(0, "seed of the global sampling generator (requests without their own seed)")
    device: str = _opt("auto", "auto, cpu or cuda")
    quantization: str = _opt(
        "auto",
        "weight-only quantization of the linear layers and LM head: auto (a GGUF's own block "
        "types, run natively; none for other models), none, int8, int4",
    )
    quantization_group_size: int = _opt(
        32, "int4 inputs per scale/zero group: 32 (as GGUF Q4_0/Q4_1), 64, 128, 256"
    )
    enforce_eager: bool = _opt(
        False, "CUDA: run every step eagerly, without capturing CUDA graphs for decode steps"
    )
    max_cuda_graph_batch_size: int = _opt(
        256, "CUDA: largest decode batch (rows) captured as a CUDA graph; larger ones run eagerly"
    )


@dataclass
class CacheConfig:
    """The paged KV cache: block size and memory budget."""

    block_size: int = _opt(16, "tokens per KV cache block")
    kv_cache_memory_bytes: int | None = _opt(
        None,
        "KV cache size in bytes, e.g. 500M or 2G (default: max_model_len tokens for "
        "min(max_num_seqs, 4) sequences, at most 4 GiB and 25%% of total memory)",
    )
    kv_cache_memory_fraction: float | None = _opt(
        None,
        "fraction of memory for the KV cache, instead of a size: of the GPU memory free after "
        "the weights are loaded on CUDA, of total RAM on CPU",
    )
    enable_prefix_caching: bool = _opt(True, "reuse the KV of shared prompt prefixes")
    kv_cache_dtype: str = _opt(
        "auto", "KV cache dtype: auto (the activation dtype), bfloat16, float32"
    )


@dataclass
class SchedulerConfig:
    """Continuous batching limits."""

    max_num_seqs: int = _opt(64, "maximum requests running in one step")
    max_num_batched_tokens: int = _opt(512, "maximum tokens computed in one step (chunk budget)")
    enable_chunked_prefill: bool = _opt(True, "split long prompts across steps")


@dataclass
class ParallelConfig:
    """Threads, data-parallel replicas and tensor-parallel ranks."""

    num_threads: int | None = _opt(None, "torch intra-op threads on CPU (default: all cores)")
    data_parallel_size: int = _opt(1, "engine replicas, each a process with its own weights and KV")
    tensor_parallel_size: int = _opt(1, "ranks that shard each layer (torch.distributed)")


@dataclass
class EngineConfig:
    """Everything the engine needs; built from keyword options by ``EngineConfig.from_options``."""

    model_config: ModelConfig = field(default_factory=ModelConfig)
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    # Speculative decoding (n-gram / suffix drafts); None = off.
    speculative_config: SpeculativeConfig | None = None

    @classmethod
    def from_options(cls, **options: Any) -> EngineConfig:
        """Route flat keyword options (``max_num_seqs=8``) to their section.

        Raises:
            ValueError: naming an unknown option, or an option whose value is out of range.
        """
        sections = {
            "model_config": ModelConfig,
            "cache_config": CacheConfig,
            "scheduler_config": SchedulerConfig,
            "parallel_config": ParallelConfig,
        }
        values: dict[str, dict[str, Any]] = {name: {} for name in sections}
        speculative_config = SpeculativeConfig.parse(options.pop("speculative_config", None))
        for key, value in options.items():
            for section_name, section_cls in sections.items():
                if key in {f.name for f in dataclasses.fields(section_cls)}:
                    values[section_name][key] = value
                    break
            else:
                raise ValueError(f"{key} is not an engine option; known options: {option_names()}")
        config = cls(
            **{name: sections[name](**values[name]) for name in sections},
            speculative_config=speculative_config,
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.model_config.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype must be auto, float32, bfloat16 or float16, got {self.model_config.dtype!r}"
            )
        if self.model_config.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.model_config.device!r}")
        if self.model_config.quantization not in ("auto", "none", "int8", "int4"):
            raise ValueError(
                "quantization must be auto, none, int8 or int4, "
                f"got {self.model_config.quantization!r}"
            )
        if self.model_config.quantization_group_size not in (32, 64, 128, 256):
            raise ValueError(
                "quantization_group_size must be 32, 64, 128 or 256, "
                f"got {self.model_config.quantization_group_size!r}"
            )
        if self.cache_config.kv_cache_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(
                "kv_cache_dtype must be auto, bfloat16 or float32, "
                f"got {self.cache_config.kv_cache_dtype!r}"
            )
        _positive("block_size", self.cache_config.block_size)
        _positive("max_cuda_graph_batch_size", self.model_config.max_cuda_graph_batch_size)
        _positive("max_num_seqs", self.scheduler_config.max_num_seqs)
        _positive("max_num_batched_tokens", self.scheduler_config.max_num_batched_tokens)
        if self.model_config.max_model_len is not None:
            _positive("max_model_len", self.model_config.max_model_len)
        if self.cache_config.kv_cache_memory_bytes is not None:
            _positive("kv_cache_memory_bytes", self.cache_config.kv_cache_memory_bytes)
        fraction = self.cache_config.kv_cache_memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {fraction}")
        if self.parallel_config.num_threads is not None:
            _positive("num_threads", self.parallel_config.num_threads)
        _positive("data_parallel_size", self.parallel_config.data_parallel_size)
        _positive("tensor_parallel_size", self.parallel_config.tensor_parallel_size)


def describe_quantization(quantization: str, group_size: int, dtype: object) -> str:
    """The weights' format for the load log: ``int4 weights (group 32)``, ``int8 weights (per
    output channel)``, or ``unquantized torch.float32 weights`` (``dtype``: the activations')."""
    if quantization == "int4":
        return f"int4 weights (group {group_size})"
    if quantization == "int8":
        return "int8 weights (per output channel)"
    if quantization == "auto":
        return f"the file's own weight types (GGUF blocks; other models {dtype})"
    return f"unquantized {dtype} weights"


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


_SECTIONS = (ModelConfig, CacheConfig, SchedulerConfig, ParallelConfig)


def option_names() -> list[str]:
    names = [f.name for section in _SECTIONS for f in dataclasses.fields(section)]
    return [*names, "speculative_config"]


def parse_bytes(text: str) -> int:
    """A byte count: ``500000000``, ``500M``, ``2G``, ``2GiB`` (K/M/G are powers of 1024).

    Raises:
        argparse.ArgumentTypeError: for anything else (argparse turns it into a usage error).
    """
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 500M, 2G)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"byte size must be positive, got {text!r}")
    return int(number * units[unit])


_CLI_TYPES = {"int": int, "float": float, "str": str}
_CLI_ALIASES = {"kv_cache_memory_bytes": ("--kv-cache-memory",)}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag-name`` per engine option (booleans get ``--no-flag`` too)."""
    group = parser.add_argument_group("engine options")
    for section in _SECTIONS:
        for f in dataclasses.fields(section):
            flags = ["--" + f.name.replace("_", "-"), *_CLI_ALIASES.get(f.name, ())]
            help_text = f.metadata.get("help", "")
            if "default" not in help_text:
                help_text += f" (default: {f.default})"
            if f.type == "bool":
                group.add_argument(
                    *flags, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
                )
                continue
            base_type = str(f.type).split(" | ")[0]
            kind = parse_bytes if f.name.endswith("_bytes") else _CLI_TYPES[base_type]
            group.add_argument(*flags, type=kind, default=f.default, help=help_text)
    group.add_argument(
        "--speculative-config",
        type=_speculative_config_arg,
        default=None,
        help='speculative decoding as a JSON object, e.g. \'{"method": "ngram", '
        '"num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 4}\' '
        "(methods: ngram, suffix; default: off)",
    )


def _speculative_config_arg(text: str) -> dict[str, Any]:
    """Validated here so argparse reports a bad field; kept as a plain dict (JSON settings)."""
    try:
        config = SpeculativeConfig.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    assert config is not None
    return config.to_dict()


def options_from_cli(namespace: argparse.Namespace) -> dict[str, Any]:
    """Collect the engine options from parsed CLI arguments."""
    return {name: getattr(namespace, name) for name in option_names() if hasattr(namespace, name)}


def single_engine_options(namespace: argparse.Namespace, command: str) -> dict[str, Any]:
    """``options_from_cli`` for a command that steps or inspects one engine in this process
    (``kaon chat``, ``kaon bench latency|throughput``, ``kaon eval generate|choice``).

    Raises:
        ValueError: naming ``data_parallel_size`` when it asks for more than one replica.
    """
    options = options_from_cli(namespace)
    replicas = options.get("data_parallel_size") or 1
    if replicas > 1:  # 0 and negatives fail EngineConfig's own check
        raise ValueError(
            f"data_parallel_size must be 1 for {command}, which runs one engine in this process "
            f"(got {replicas}); replicas serve with 'kaon serve --data-parallel-size N' (measured "
            "by 'kaon bench serve') and generate offline with 'kaon generate' and 'kaon batch'"
        )
    return options
