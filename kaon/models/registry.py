"""Model registry: ArchitectureConfig.architecture -> the module class that runs it."""

from __future__ import annotations

from torch import nn

from kaon.models.architecture import ArchitectureConfig
from kaon.models.gemma3 import Gemma3ForCausalLM
from kaon.models.llama import LlamaForCausalLM

# Mistral and Qwen2 are Llama with config differences (Qwen2: q/k/v biases).
_MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
}
# Architectures that run on one rank only (no tensor-parallel sharding plan yet).
SINGLE_RANK_ARCHITECTURES = frozenset({"Gemma3ForCausalLM"})


def model_class(config: ArchitectureConfig) -> type[nn.Module]:
    """The class for ``config.architecture`` (validated by ArchitectureConfig)."""
    return _MODEL_CLASSES[config.architecture]
