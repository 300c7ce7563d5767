"""Structured outputs: constrained decoding with llguidance (see docs/structured_outputs.md).

    LLMEngine.add_request -> grammar_from_params (validated: ValueError naming the field)
                          -> StructuredOutputManager.create_request (compiles on a thread pool)
    Scheduler             -> waits for the grammar; advances the matcher on each sampled token
    LLMEngine.step        -> StructuredOutputManager.grammar_bitmask -> SchedulerOutput
    Sampler               -> masks the constrained rows' logits

The engine layer imports this package; ``kaon/core`` only sees the ``StructuredOutputRequest``
object through the small protocol in ``kaon/request.py``.
"""

from kaon.structured_outputs.grammar import grammar_from_params
from kaon.structured_outputs.manager import StructuredOutputManager
from kaon.structured_outputs.request import StructuredOutputRequest

__all__ = ["StructuredOutputManager", "StructuredOutputRequest", "grammar_from_params"]
