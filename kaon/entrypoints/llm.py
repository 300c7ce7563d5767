"""LLM: the offline Python API (``LLM().generate(prompts, SamplingParams(...))``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tqdm.auto import tqdm

from kaon.config import EngineConfig
from kaon.engine.input_processor import PromptType, parse_prompt
from kaon.engine.llm_engine import LLMEngine
from kaon.outputs import RequestOutput
from kaon.sampling_params import SamplingParams

Messages = list[dict]


class LLM:
    """Generate for many prompts at once with continuous batching.

    ``LLM(model=None, **engine_options)``: ``model`` is a .gguf file or a Hugging Face directory
    (default: SmolLM2-135M-Instruct); options are those of ``kaon.config`` (``max_num_seqs``,
    ``max_num_batched_tokens``, ``kv_cache_memory_bytes``, ``dtype``, ...).
    ``data_parallel_size=N`` > 1 runs N engine processes that split each ``generate`` call
    (``kaon.entrypoints.llm_data_parallel``); ``engine`` is None then, and ``close()`` (or a
    ``with`` block) stops them.

    Raises:
        ValueError: naming an unknown or out-of-range option.
    """

    def __init__(self, model: str | None = None, **engine_options: object) -> None:
        self._counter = itertools.count()
        self._data_parallel = None
        if engine_options.get("data_parallel_size", 1) != 1:
            # N replica processes (kaon.entrypoints.llm_data_parallel); no engine in this one.
            from kaon.entrypoints.llm_data_parallel import DataParallelEngines

            EngineConfig.from_options(model=model, **engine_options)  # bad options fail here
            self.engine = None
            self._data_parallel = DataParallelEngines(LLM, model, engine_options)
            return
        self.engine = LLMEngine.from_options(model=model, **engine_options)

    @property
    def tokenizer(self):
        return (self._data_parallel or self.engine).tokenizer

    def close(self) -> None:
        """Stop the data-parallel replica processes and the engine's tensor-parallel worker
        ranks, if any. Idempotent; also done on ``with LLM(...) as llm:`` exit and at
        interpreter exit."""
        if self._data_parallel is not None:
            self._data_parallel.close()
        if self.engine is not None:
            self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams used when none are given: the model's generation_config.json
        (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens) over kaon's
        defaults, as vLLM does."""
        defaults = (self._data_parallel or self.engine).generation_defaults
        names = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        options = {name: defaults[name] for name in names if name in defaults}
        if "max_new_tokens" in defaults:
            options["max_tokens"] = defaults["max_new_tokens"]
        if defaults.get("do_sample") is False:
            options["temperature"] = 0.0
        return SamplingParams(**options)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for each prompt; outputs keep input order.

        A prompt is a string, a list of token ids, or one of vLLM's prompt dicts
        ``{"prompt": "..."}`` / ``{"prompt_token_ids": [...]}``; ``prompts`` is one prompt or a
        list of them (kinds may be mixed).

        Raises:
            ValueError: for a bad prompt (a bad dict's field is named) or sampling parameter;
                nothing is queued in that case.
        """
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = _as_params_list(sampling_params, len(prompt_list))
        request_ids = [str(next(self._counter)) for _ in prompt_list]
        if self._data_parallel is not None:
            return self._data_parallel.generate(request_ids, prompt_list, params_list, use_tqdm)
        try:
            for request_id, prompt, params in zip(
                request_ids, prompt_list, params_list, strict=True
            ):
                self.engine.add_request(request_id, prompt, params)
        except ValueError:
            self.engine.abort_request(request_ids)
            raise
        return self._run(request_ids, use_tqdm)

    def chat(
        self,
        messages: Messages | Sequence[Messages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            self.tokenizer.apply_chat_template(
                list(conv), add_generation_prompt=add_generation_prompt
            )
            for conv in conversations  # type: ignore[union-attr]
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        wanted = set(request_ids)
        finished: dict[str, RequestOutput] = {}
        progress = tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm, unit="req")
        with progress:
            while len(finished) < len(request_ids):
                if not self.engine.has_unfinished_requests():
                    break  # defensive: nothing left to run
                for output in self.engine.step():
                    if output.finished and output.request_id in wanted:
                        finished[output.request_id] = output
                        progress.update(1)
                failed = self.engine.take_failed_requests()
                if failed:
                    self.engine.abort_request([i for i in request_ids if i not in finished])
                    request_id, error = next(iter(failed.items()))
                    raise RuntimeError(f"request {request_id} failed: {error}") from error
        return [finished[request_id] for request_id in request_ids if request_id in finished]


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[str | list[int]]:
    """One prompt or a list of them -> a list of texts / token id lists (dicts unwrapped)."""
    if isinstance(prompts, str | dict):
        return [parse_prompt(prompts)]
    if isinstance(prompts, list | tuple) and prompts and all(isinstance(p, int) for p in prompts):
        return [list(prompts)]  # one prompt given as token ids
    if not isinstance(prompts, list | tuple):
        raise ValueError(
            f"prompts must be a string, token ids or a list of them, got {type(prompts).__name__}"
        )
    if not prompts:
        raise ValueError("prompts must not be empty")
    return [parse_prompt(prompt) for prompt in prompts]  # type: ignore[arg-type]


def _as_params_list(
    sampling_params: SamplingParams | Sequence[SamplingParams], count: int
) -> list[SamplingParams]:
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"sampling_params has {len(params)} entries for {count} prompts")
    return params
