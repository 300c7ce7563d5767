"""Tokenizer: text <-> token ids, built on the HF `tokenizers` library.

Two sources are supported:

* a GGUF file's `tokenizer.ggml.*` metadata (`Tokenizer.from_gguf`), rebuilt so that encoding
  reproduces llama.cpp (llama-vocab.cpp): byte-level BPE for `gpt2`, score-ranked BPE with byte
  fallback for SentencePiece `llama` vocabularies;
* a Hugging Face model directory (`Tokenizer.from_hf_dir`): tokenizer.json plus
  tokenizer_config.json / generation_config.json.

Chat templates are rendered by `kaon.chat_template` (jinja2, the way transformers does).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from kaon.chat_template import GEMMA_CHAT_TEMPLATE, render_chat_template
from kaon.tokenizer_gguf import LLAMA3_PRE_NAMES, build_gguf_hf_tokenizer

logger = logging.getLogger(__name__)

# End-of-generation tokens llama.cpp recognises by text (llama-vocab.cpp, special_eog_ids).
_EOG_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>",
    "<end_of_turn>", "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<|return|>", "<|call|>",
)  # fmt: skip
_SPM_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a GGUF file's metadata key/values as plain Python values (str, int, float, lists).

    Tensor data is memory-mapped by the reader but never read.
    Raises FileNotFoundError if `path` does not exist, ValueError if it is not a GGUF file.
    """
    from kaon.gguf_reader import GGUFFileReader  # gguf pulls in numpy; only GGUF callers need it

    reader = GGUFFileReader(os.fspath(path), "r")
    return {name: field.contents() for name, field in reader.fields.items()}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_DECODER = {ch: b for b, ch in _bytes_to_unicode().items()}


def _read_json(path: str) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_content(token: object) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken-like dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _hf_dir_chat_template(path: str, config: dict[str, Any]) -> str | None:
    """The chat template of a HF model dir: tokenizer_config.json, else chat_template.jinja."""
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    jinja_path = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    return template if isinstance(template, str) else None


class Tokenizer:
    """Text <-> token ids for one model, plus its chat template.

    Wraps a `tokenizers.Tokenizer`; special tokens written in the text (`<|im_start|>`) are parsed
    as single tokens. Token ids are ints in [0, vocab_size).
    """

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        *,
        is_byte_level: bool,
        bos_token_id: int | None,
        eos_token_id: int | None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        vocab_size: int | None = None,
        post_processor_adds_special: bool = False,
    ) -> None:
        self._hf = hf_tokenizer
        self._is_byte_level = is_byte_level
        self._bos_token_id = bos_token_id
        self._eos_token_id = eos_token_id
        self._add_bos_token = add_bos_token
        self._add_eos_token = add_eos_token
        # HF dirs add BOS/EOS through tokenizer.json's post-processor; GGUF ones do it here.
        self._post_processor_adds_special = post_processor_adds_special
        self._chat_template = chat_template
        self._vocab_size = vocab_size or hf_tokenizer.get_vocab_size(with_added_tokens=True)
        eog_ids = (hf_tokenizer.token_to_id(text) for text in _EOG_TOKENS)
        self._eos_token_ids = {
            i for i in (eos_token_id, *extra_eos_token_ids, *eog_ids) if i is not None
        }
        added = hf_tokenizer.get_added_tokens_decoder()
        special_ids = {i for i, tok in added.items() if tok.special} | {bos_token_id, eos_token_id}
        self._all_special_ids = sorted(i for i in special_ids if i is not None)
        self._token_bytes: dict[int, bytes] = {}
        self._byte_fallback_ids: frozenset[int] | None = None

    @classmethod
    def from_gguf(cls, fields: dict[str, object]) -> Tokenizer:
        """Build from GGUF metadata (key -> value, as `read_gguf_metadata` returns).

        Uses tokenizer.ggml.{model, pre, tokens, token_type, merges, scores, bos_token_id,
        eos_token_id, add_bos_token, add_eos_token, add_space_prefix} and tokenizer.chat_template
        (Gemma's turn format when a vocabulary with ``<start_of_turn>`` comes without one).
        Raises ValueError naming `tokenizer.ggml.model` for models other than gpt2 and llama.
        """
        hf = build_gguf_hf_tokenizer(fields)
        model = fields["tokenizer.ggml.model"]
        # llama.cpp's defaults when the GGUF does not say: SentencePiece and Llama 3 add BOS.
        pre = fields.get("tokenizer.ggml.pre")
        add_bos_default = model == "llama" or pre in LLAMA3_PRE_NAMES
        ids = {
            name: int(fields[f"tokenizer.ggml.{name}_token_id"])
            for name in ("bos", "eos", "eot")
            if f"tokenizer.ggml.{name}_token_id" in fields
        }
        template = fields.get("tokenizer.chat_template")
        if not isinstance(template, str) and hf.token_to_id("<start_of_turn>") is not None:
            template = GEMMA_CHAT_TEMPLATE  # Gemma files converted without their template
        return cls(
            hf,
            is_byte_level=model == "gpt2",
            bos_token_id=ids.get("bos"),
            eos_token_id=ids.get("eos"),
            add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", add_bos_default)),
            add_eos_token=bool(fields.get("tokenizer.ggml.add_eos_token", False)),
            chat_template=template if isinstance(template, str) else None,
            extra_eos_token_ids=[ids["eot"]] if "eot" in ids else [],
            vocab_size=len(fields["tokenizer.ggml.tokens"]),
        )

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build from a Hugging Face model directory.

        Reads tokenizer.json (required), tokenizer_config.json (bos/eos tokens, chat_template),
        chat_template.jinja and generation_config.json (`eos_token_id`, int or list) if present.
        Raises FileNotFoundError if tokenizer.json is missing.
        """
        path = os.fspath(path)
        tokenizer_json = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_json):
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        hf = HFTokenizer.from_file(tokenizer_json)
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        generation = _read_json(os.path.join(path, "generation_config.json"))
        generation_eos = generation.get("eos_token_id")
        if not isinstance(generation_eos, list):
            generation_eos = [] if generation_eos is None else [generation_eos]
        bos_token, eos_token = (_token_content(config.get(k)) for k in ("bos_token", "eos_token"))
        bos_id = hf.token_to_id(bos_token) if bos_token else None
        eos_id = hf.token_to_id(eos_token) if eos_token else None
        if eos_id is None and generation_eos:
            eos_id = generation_eos[0]
        # tokenizer.json's post-processor adds BOS (or not); report what it does.
        adds_bos = hf.num_special_tokens_to_add(False) > 0 and hf.encode("a").ids[:1] == [bos_id]
        # Only a bare ByteLevel decoder makes decode() a plain UTF-8 decoding of token bytes.
        decoder = json.loads(hf.decoder.__getstate__()) if hf.decoder is not None else {}
        return cls(
            hf,
            is_byte_level=decoder.get("type") == "ByteLevel",
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            add_bos_token=adds_bos,
            chat_template=_hf_dir_chat_template(path, config),
            extra_eos_token_ids=generation_eos,
            post_processor_adds_special=True,
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the model's embedding rows), including special tokens."""
        return self._vocab_size

    @property
    def backend_tokenizer(self) -> HFTokenizer:
        """The wrapped `tokenizers.Tokenizer` (its JSON builds other libraries' tokenizers, e.g.
        llguidance's for structured outputs)."""
        return self._hf

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def eos_token_ids(self) -> set[int]:
        """eos plus end-of-turn tokens present in the vocab (`<|im_end|>`, `<|eot_id|>`, ...)."""
        return set(self._eos_token_ids)

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def all_special_ids(self) -> list[int]:
        """Sorted ids of special tokens (control tokens, bos, eos); skipped by decode()."""
        return list(self._all_special_ids)

    @property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of SentencePiece byte tokens (`<0x41>`); empty for byte-level vocabularies."""
        if self._byte_fallback_ids is None:
            vocab = {} if self._is_byte_level else self._hf.get_vocab(with_added_tokens=False)
            byte_ids = (i for tok, i in vocab.items() if _SPM_BYTE_TOKEN.fullmatch(tok))
            self._byte_fallback_ids = frozenset(byte_ids)
        return self._byte_fallback_ids

    @property
    def is_byte_level(self) -> bool:
        """True when tokens stand for raw bytes (GPT-2 byte-level BPE): decode() is then the
        UTF-8 decoding (U+FFFD for bad bytes) of the concatenated `id_to_token_bytes`."""
        return self._is_byte_level

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`. Special tokens written in the text are always parsed; BOS (EOS)
        is added only when `add_special_tokens` and the model asks for it."""
        ids = self._hf.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and not self._post_processor_adds_special:
            if self._add_bos_token and self._bos_token_id is not None:
                ids.insert(0, self._bos_token_id)
            if self._add_eos_token and self._eos_token_id is not None:
                ids.append(self._eos_token_id)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; incomplete or invalid UTF-8 becomes U+FFFD. Unknown ids are dropped."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """Vocabulary strings for `ids` (byte-level form, e.g. 'Ġthe'). Raises ValueError naming
        `ids` for ids outside the vocabulary."""
        tokens = [self._hf.id_to_token(i) for i in ids]
        if None in tokens:
            raise ValueError(f"ids: token id {ids[tokens.index(None)]} is not in the vocabulary")
        return tokens

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (OpenAI logprobs `bytes`); may be a partial
        UTF-8 character. Raises ValueError naming `token_id` if it is not in the vocabulary."""
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        token = self._hf.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token_id: {token_id} is not in the vocabulary")
        if self._is_byte_level:
            # As tokenizers' ByteLevel decoder: tokens outside the byte alphabet are raw text.
            if all(ch in _BYTE_DECODER for ch in token):
                data = bytes(_BYTE_DECODER[ch] for ch in token)
            else:
                data = token.encode("utf-8")
        elif match := _SPM_BYTE_TOKEN.fullmatch(token):
            data = bytes([int(match.group(1), 16)])
        else:
            data = token.replace("▁", " ").encode("utf-8")
        self._token_bytes[token_id] = data
        return data

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` with the model's (or the given) jinja chat template, as transformers.

        `content` may be a string or a list of {"type": "text", "text": ...} parts (joined with
        newlines). Extra keyword arguments (tools, documents, ...) become template variables.
        Raises ValueError naming `messages` for malformed messages or when the template calls
        raise_exception, and naming `chat_template` when the model has none.
        """
        template = chat_template or self._chat_template
        if not template:
            raise ValueError("chat_template: this model has no chat template; use a completion")
        tokens = {"bos_token": self._bos_token_id, "eos_token": self._eos_token_id}
        tokens = {
            name: self._hf.id_to_token(i) if i is not None else "" for name, i in tokens.items()
        }
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, **{**tokens, **kwargs}
        )
