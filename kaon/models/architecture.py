"""ArchitectureConfig: the shape of a Llama-family decoder (from GGUF metadata or config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Hugging Face architecture names kaon runs, and the GGUF general.architecture values that map to
# them (Mistral GGUFs use the "llama" architecture).
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass
class ArchitectureConfig:
    """Hyper-parameters of a decoder-only Llama-family transformer."""

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
        arch = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"config.json architectures {architectures} are not supported; kaon runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        num_heads = config["num_attention_heads"]
        return cls(
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
