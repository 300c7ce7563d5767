"""Input processing: user prompt -> validated prompt token ids and per-request SamplingParams."""

from __future__ import annotations

from kaon.sampling_params import SamplingParams

# A prompt: text, token ids, or vLLM's prompt dicts {"prompt": text} / {"prompt_token_ids": ids}.
PromptType = str | list[int] | dict


def parse_prompt(prompt: PromptType) -> str | list[int]:
    """The text or token ids of one prompt, unwrapping vLLM's TextPrompt / TokensPrompt dicts.

    Raises:
        ValueError: for a dict without exactly one of ``prompt`` (a string) and
            ``prompt_token_ids`` (a list), or with another key (named in the message).
    """
    if not isinstance(prompt, dict):
        return prompt
    unknown = sorted(set(prompt) - {"prompt", "prompt_token_ids"})
    if unknown:
        raise ValueError(
            f"prompt field {unknown[0]!r} is not supported (a prompt dict has 'prompt' or "
            "'prompt_token_ids')"
        )
    if ("prompt" in prompt) == ("prompt_token_ids" in prompt):
        raise ValueError("a prompt dict needs exactly one of 'prompt' and 'prompt_token_ids'")
    if "prompt" in prompt:
        if not isinstance(prompt["prompt"], str):
            raise ValueError(f"prompt must be a string, got {type(prompt['prompt']).__name__}")
        return prompt["prompt"]
    token_ids = prompt["prompt_token_ids"]
    if not isinstance(token_ids, list | tuple):
        raise ValueError(
            f"prompt_token_ids must be a list of token ids, got {type(token_ids).__name__}"
        )
    return list(token_ids)


class InputProcessor:
    """Tokenizes and validates prompts against the model's vocabulary and context length."""

    def __init__(self, tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = tokenizer.vocab_size

    def process(
        self, prompt: PromptType, sampling_params: SamplingParams
    ) -> tuple[str | None, list[int]]:
        """Returns (prompt text or None, prompt token ids).

        Raises:
            ValueError: naming ``prompt`` (empty, wrong type, token id outside the vocabulary,
                longer than max_model_len allows; a bad prompt dict's field) or a sampling
                field with an out-of-vocab id.
        """
        prompt = parse_prompt(prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            prompt_text: str | None = prompt
            token_ids = self.tokenizer.encode(prompt)
            if not token_ids:
                raise ValueError("prompt must not be empty")
        elif isinstance(prompt, list | tuple):
            if not prompt:
                raise ValueError("prompt must not be empty")
            prompt_text = None
            token_ids = list(prompt)
            for token_id in token_ids:
                if isinstance(token_id, bool) or not isinstance(token_id, int):
                    raise ValueError(f"prompt token ids must be integers, got {token_id!r}")
                if not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"prompt token id {token_id} is outside the vocabulary "
                        f"[0, {self.vocab_size})"
                    )
        else:
            raise ValueError(
                f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            )
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(token_ids)} tokens, but max_model_len is {self.max_model_len} "
                "(prompt plus at least one generated token must fit)"
            )
        sampling_params.validate_token_ids(self.vocab_size)
        return prompt_text, token_ids
