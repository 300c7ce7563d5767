"""kaon: a high-performance LLM inference engine and OpenAI-compatible server on PyTorch."""

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
