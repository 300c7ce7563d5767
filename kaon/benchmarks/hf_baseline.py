"""The Hugging Face transformers baseline, run in the same process on the same token ids.

transformers is imported lazily: it is a benchmark-only dependency, never needed by the engine.
The model comes from the same GGUF file kaon runs, dequantized by transformers to float32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


def load_hf_model(gguf_path: str) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from ``gguf_path`` in float32, eval mode, never stopping at eos.

    eos is unset on the generation config so every sequence runs to its fixed length and an
    eos is generated like any token, matching kaon's ``ignore_eos`` (``min_new_tokens`` would
    instead mask eos and change the greedy tokens).

    Raises:
        ImportError: if transformers is not installed.
    """
    from transformers import AutoModelForCausalLM

    directory, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None
    return model


def _generate_kwargs(model: torch.nn.Module, output_len: int) -> dict[str, object]:
    pad_token_id = model.config.pad_token_id
    return {
        "do_sample": False,
        "max_new_tokens": output_len,
        "min_new_tokens": output_len,
        "pad_token_id": 0 if pad_token_id is None else pad_token_id,
    }


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, both int64 ``[batch, max_prompt_len]``.

    ::

        prompt [5, 6]     -> input_ids [pad, 5, 6]   attention_mask [0, 1, 1]
        prompt [7, 8, 9]  -> input_ids [7, 8, 9]     attention_mask [1, 1, 1]
    """
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.int64)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.inference_mode()
def generate_batched(
    model: torch.nn.Module,
    prompts: list[list[int]],
    output_len: int,
    batch_size: int,
    on_batch_done: Callable[[int], None] | None = None,
) -> tuple[list[list[int]], float]:
    """Greedy ``generate`` over padded batches of ``batch_size`` prompts, in order.

    Returns (generated token ids per prompt, each exactly ``output_len`` long; elapsed seconds).
    ``on_batch_done(num_prompts_in_batch)`` is called after each batch (for a progress bar).
    """
    kwargs = _generate_kwargs(model, output_len)
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        input_ids, attention_mask = left_pad(batch, kwargs["pad_token_id"])  # type: ignore[arg-type]
        sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        outputs.extend(sequences[:, input_ids.shape[1] :].tolist())
        if on_batch_done is not None:
            on_batch_done(len(batch))
    return outputs, time.perf_counter() - start


class _TokenTimer:
    """A transformers streamer that records when each generated token arrives.

    ``generate`` first puts the prompt ids, then one tensor per new token, then calls ``end``.
    """

    def __init__(self) -> None:
        self.token_times: list[float] = []
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.token_times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def generate_single(
    model: torch.nn.Module, prompt: list[int], output_len: int
) -> tuple[list[int], dict[str, float]]:
    """One greedy request at batch 1; returns (token ids, figures in seconds).

    Figures: ``ttft`` (call to first token), ``tpot`` (mean gap between later tokens; 0 when
    ``output_len`` is 1) and ``e2e`` (call to return).
    """
    timer = _TokenTimer()
    input_ids = torch.tensor([prompt], dtype=torch.int64)
    start = time.perf_counter()
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        streamer=timer,
        **_generate_kwargs(model, output_len),
    )
    end = time.perf_counter()
    times = timer.token_times
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    figures = {"ttft": times[0] - start, "tpot": tpot, "e2e": end - start}
    return sequences[0, len(prompt) :].tolist(), figures
