"""SamplingParams: how one request's tokens are chosen and when its generation stops.

Names follow the OpenAI API and vLLM. ``temperature == 0`` means greedy decoding. Every field is
checked in ``__post_init__``; a bad value raises ``ValueError`` whose message starts with the field
name, so the HTTP layer can turn it into a 400 naming the parameter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

_MAX_LOGPROBS = 20  # OpenAI caps top_logprobs at 20
_STRUCTURED_FIELDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """A constraint on the generated text, enforced token by token (vLLM's names).

    Exactly one field is set:
        json         a JSON schema (dict or its JSON text): the output is one JSON value valid
                     under it (draft 2020-12 subset that llguidance supports)
        regex        the whole output fullmatches this regular expression (Rust regex syntax)
        choice       the output is exactly one of these strings
        grammar      a Lark grammar as llguidance accepts it (``start:`` rule; may embed
                     ``%json{...}`` schemas)
        json_object  any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)

    Raises:
        ValueError: naming the field when none or several are set, or a field has the wrong type.
            Whether a schema, regex or grammar compiles is checked when the request is added
            (``kaon.structured_outputs``), also as a ValueError naming the field.
    """

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        chosen = [name for name in _STRUCTURED_FIELDS if getattr(self, name) not in (None, False)]
        if len(chosen) != 1:
            names = ", ".join(chosen) if chosen else "none"
            raise ValueError(
                f"structured_outputs: set exactly one of json, regex, choice, grammar or "
                f"json_object (got {names})"
            )
        if self.json is not None and not isinstance(self.json, dict | str):
            raise ValueError("structured_outputs.json must be a JSON schema (object or string)")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string")
        if self.choice is not None:
            if not isinstance(self.choice, list) or not self.choice:
                raise ValueError("structured_outputs.choice must be a non-empty list of strings")
            if not all(isinstance(item, str) and item for item in self.choice):
                raise ValueError("structured_outputs.choice must hold non-empty strings")
        if not isinstance(self.json_object, bool):
            raise ValueError("structured_outputs.json_object must be a boolean")

    @property
    def kind(self) -> str:
        """The field that is set: "json", "regex", "choice", "grammar" or "json_object"."""
        return next(n for n in _STRUCTURED_FIELDS if getattr(self, n) not in (None, False))


@dataclass
class SamplingParams:
    """Per-request sampling and stopping options.

    Penalties follow OpenAI (presence / frequency, additive on logits, over generated tokens) and
    the CTRL paper's repetition penalty (Keskar et al. 2019, divide positive logits / multiply
    negative ones, over prompt and generated tokens). ``top_p`` is nucleus sampling (Holtzman et al.
    2019); ``min_p`` keeps tokens whose probability is at least ``min_p`` times the top one.
    """

    n: int = 1  # number of completions returned for the prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]
    top_k: int = 0  # 0 or -1 = disabled
    min_p: float = 0.0  # in [0, 1]
    presence_penalty: float = 0.0  # in [-2, 2]
    frequency_penalty: float = 0.0  # in [-2, 2]
    repetition_penalty: float = 1.0  # > 0; 1 = disabled
    seed: int | None = (
        None  # per-request generator seed: same seed, same output, whatever the batch
    )
    logit_bias: dict[int, float] | None = None  # token id -> additive bias in [-100, 100]
    max_tokens: int | None = 16  # generated tokens; None = up to max_model_len
    min_tokens: int = 0  # eos / stop_token_ids are masked until this many tokens exist
    stop: list[str] | str | None = None  # stop strings, excluded from the text
    stop_token_ids: list[int] | None = None  # extra ids that end generation (kept in token_ids)
    ignore_eos: bool = False  # keep generating after the model's eos
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # number of top logprobs per generated token (0 = sampled only)
    prompt_logprobs: int | None = None  # same, for each prompt token after the first
    detokenize: bool = True
    structured_outputs: StructuredOutputsParams | None = None  # constrained decoding
    output_kind_delta: bool = False  # internal: stream deltas instead of cumulative text

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        _check_int("n", self.n, low=1)
        _check_number("temperature", self.temperature, low=0.0)
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, low=0)
        _check_number("min_p", self.min_p, low=0.0, high=1.0)
        _check_number("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_number("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None:
            _check_int("seed", self.seed, low=-(2**63), high=2**64 - 1)  # torch.Generator range
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens, got {self.min_tokens} > {self.max_tokens}"
            )
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a string or a list of strings")
        if any(s == "" for s in self.stop):
            raise ValueError("stop must not contain empty strings")
        if not isinstance(self.stop_token_ids, list):
            raise ValueError("stop_token_ids must be a list of token ids")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, low=0)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=_MAX_LOGPROBS)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, low=0, high=_MAX_LOGPROBS)
        if self.logit_bias is not None:
            self._validate_logit_bias()
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise ValueError("structured_outputs must be a StructuredOutputsParams")

    def _validate_logit_bias(self) -> None:
        if not isinstance(self.logit_bias, dict):
            raise ValueError("logit_bias must map token ids to numbers")
        clean: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            try:
                token_id = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
            if token_id < 0:
                raise ValueError(f"logit_bias keys must be token ids >= 0, got {token_id}")
            _check_number("logit_bias", value, low=-100.0, high=100.0)
            clean[token_id] = float(value)
        self.logit_bias = clean

    def validate_token_ids(self, vocab_size: int) -> None:
        """Check the token ids this object names against the model's vocabulary.

        Raises:
            ValueError: naming ``logit_bias`` or ``stop_token_ids`` when an id is >= vocab_size.
        """
        for token_id in self.logit_bias or {}:
            if token_id >= vocab_size:
                raise ValueError(f"logit_bias token id {token_id} is outside the vocabulary")
        for token_id in self.stop_token_ids:
            if token_id >= vocab_size:
                raise ValueError(f"stop_token_ids token id {token_id} is outside the vocabulary")

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (temperature 0)."""
        return self.temperature < 1e-5

    def clone(self) -> SamplingParams:
        return copy.deepcopy(self)


def _check_number(
    name: str, value: object, low: float | None = None, high: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
