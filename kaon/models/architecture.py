"""ArchitectureConfig: the shape of a decoder (from GGUF metadata or config.json).

Llama-family models use the base fields; Gemma 3 adds interleaved sliding-window layers
(``layer_types``, ``sliding_window``), a second RoPE base for them (``rope_local_theta``), its
attention scale (``query_pre_attn_scalar``) and final logit soft-capping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Hugging Face architecture names kaon runs, and the GGUF general.architecture values that map to
# them (Mistral GGUFs use the "llama" architecture).
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM",
)  # fmt: skip
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
}  # fmt: skip
# Gemma 3 (Google 2025): every sixth layer attends globally, the others to a sliding window.
GEMMA3_SLIDING_WINDOW_PATTERN = 6


@dataclass
class ArchitectureConfig:
    """Hyper-parameters of a decoder-only transformer (Llama family or Gemma 3)."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Gemma 3 only (None elsewhere):
    layer_types: list[str] | None = None  # per layer: "sliding_attention" | "full_attention"
    sliding_window: int | None = None  # tokens a sliding layer's query sees, itself included
    rope_local_theta: float | None = None  # RoPE base of the sliding layers
    query_pre_attn_scalar: float | None = None  # attention scale is its -1/2 power
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not supported; kaon runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes per token over all layers, per byte of element size (x dtype size)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, config: dict) -> ArchitectureConfig:
        """Map a Hugging Face config.json dict.

        Raises:
            ValueError: naming ``architectures`` when the model is not a supported Llama family.
        """
        architectures = config.get("architectures") or []
        if config.get("model_type") == "gemma3_text" and not architectures:
            architectures = ["Gemma3ForCausalLM"]
        arch = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"config.json architectures {architectures} are not supported; kaon runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        num_heads = config["num_attention_heads"]
        fields = dict(
            architecture=arch,
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=config.get("num_key_value_heads") or num_heads,
            vocab_size=config["vocab_size"],
            head_dim=config.get("head_dim") or 0,
            rms_norm_eps=config.get("rms_norm_eps", 1e-5),
            rope_theta=config.get("rope_theta", 10000.0),
            rope_scaling=config.get("rope_scaling"),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", arch == "Qwen2ForCausalLM"),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
        if arch == "Gemma3ForCausalLM":
            fields.update(_gemma3_fields(config))
        return cls(**fields)


def gemma3_layer_types(num_layers: int, pattern: int = GEMMA3_SLIDING_WINDOW_PATTERN) -> list[str]:
    """Gemma 3's default interleaving: layer i is global when (i + 1) % pattern == 0."""
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(num_layers)
    ]


def _gemma3_fields(config: dict) -> dict:
    """Gemma 3 config.json keys (transformers 4.5x ``rope_theta``/``rope_local_base_freq`` or
    5.x ``rope_parameters`` per layer type).

    Raises:
        ValueError: naming ``attn_logit_softcapping`` (Gemma 2's attention soft-capping), which
            kaon does not implement.
    """
    if config.get("attn_logit_softcapping") is not None:
        raise ValueError("attn_logit_softcapping: attention soft-capping is not supported")
    rope = config.get("rope_parameters") or {}
    full, sliding = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    num_layers = config["num_hidden_layers"]
    pattern = config.get("sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN)
    scaling = config.get("rope_scaling")
    if full.get("rope_type", "default") != "default":
        scaling = full
    return {
        "rope_theta": full.get("rope_theta", config.get("rope_theta", 1_000_000.0)),
        "rope_scaling": scaling,
        "rope_local_theta": sliding.get("rope_theta", config.get("rope_local_base_freq", 10_000.0)),
        "layer_types": config.get("layer_types") or gemma3_layer_types(num_layers, pattern),
        "sliding_window": config.get("sliding_window", 4096),
        "query_pre_attn_scalar": config.get("query_pre_attn_scalar", 256),
        "final_logit_softcapping": config.get("final_logit_softcapping"),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "tie_word_embeddings": config.get("tie_word_embeddings", True),
    }
