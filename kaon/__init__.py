"""kaon: a high-performance LLM inference engine and OpenAI-compatible server on PyTorch.

``LLM``, ``SamplingParams``, ``RequestOutput`` and ``CompletionOutput`` are imported on first
use (PEP 562), so that ``kaon --help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kaon.entrypoints.llm import LLM
    from kaon.outputs import CompletionOutput, RequestOutput
    from kaon.sampling_params import SamplingParams, StructuredOutputsParams

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "CompletionOutput",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "__version__",
]

_LAZY = {
    "LLM": "kaon.entrypoints.llm",
    "CompletionOutput": "kaon.outputs",
    "RequestOutput": "kaon.outputs",
    "SamplingParams": "kaon.sampling_params",
    "StructuredOutputsParams": "kaon.sampling_params",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'kaon' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
