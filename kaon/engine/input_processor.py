"""Input processing: user prompt -> validated prompt token ids and per-request SamplingParams."""

from __future__ import annotations

from kaon.sampling_params import SamplingParams

PromptType = str | list[int]


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
                longer than max_model_len allows) or a sampling field with an out-of-vocab id.
        """
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
