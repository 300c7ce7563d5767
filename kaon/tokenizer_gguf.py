"""GGUF tokenizer metadata -> a HF ``tokenizers`` tokenizer that encodes as llama.cpp does.

Follows llama.cpp's llama-vocab.cpp: byte-level BPE for ``tokenizer.ggml.model == "gpt2"`` with
the pre-tokenizer its ``tokenizer.ggml.pre`` selects (SmolLM2: digits split one by one), and
score-ranked BPE with byte fallback for SentencePiece ``llama`` vocabularies. Token types are
gguf.TokenType's. Used by ``kaon.tokenizer.Tokenizer.from_gguf``.
"""

from __future__ import annotations

import logging

import numpy as np
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

logger = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType).
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_BYTE = 1, 2, 3, 4, 6

# Pre-tokenizer regexes, as adapted in llama.cpp's llama-vocab.cpp (no inline (?i:) groups).
_LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` names grouped by the llama.cpp pre-tokenizer type they select.
_PRE_GPT2 = {"default", "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "poro-chat"}
_PRE_DIGITS_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
LLAMA3_PRE_NAMES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "pixtral"}
_PRE_QWEN2 = {"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"}


def _gpt2_pre_tokenizer(pre: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """Pre-tokenizer for `tokenizer.ggml.pre`, and whether whole-word vocab hits skip merges."""
    if pre in _PRE_DIGITS_GPT2:
        digits = pre_tokenizers.Digits(individual_digits=True)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        return pre_tokenizers.Sequence([digits, byte_level]), False
    pattern = {
        **dict.fromkeys(LLAMA3_PRE_NAMES, _LLAMA3_PATTERN),
        **dict.fromkeys(_PRE_QWEN2, _QWEN2_PATTERN),
    }
    if pre in pattern:
        split = pre_tokenizers.Split(Regex(pattern[pre]), behavior="isolated", invert=False)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return pre_tokenizers.Sequence([split, byte_level]), pre in LLAMA3_PRE_NAMES
    if pre not in _PRE_GPT2:
        logger.warning("tokenizer.ggml.pre=%r is not known; using the GPT-2 regex", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False


def _spm_merges(
    tokens: list[str], scores: list[float], types: list[int], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    """BPE merges that replay SentencePiece's highest-score-first bigram merging.

    Every piece `l + r` in the vocab yields a merge (l, r) ranked by the piece's score, then by
    the ids of l and r, as in transformers' SentencePieceExtractor. ``vocab``: piece -> first id.
    Hot at start-up (Gemma 3: 1.2 M cuts of 262,144 pieces), hence ids, not strings, in the loop
    and one numpy sort.
    """
    skip = (_TOKEN_CONTROL, _TOKEN_BYTE, _TOKEN_UNKNOWN)
    find = vocab.get
    ranks: list[float] = []
    left_ids: list[int] = []
    right_ids: list[int] = []
    for i, piece in enumerate(tokens):
        if len(piece) < 2 or types[i] in skip:
            continue
        for cut in range(1, len(piece)):
            left = find(piece[:cut])
            if left is None:
                continue
            right = find(piece[cut:])
            if right is not None:
                ranks.append(-scores[i])
                left_ids.append(left)
                right_ids.append(right)
    left_array, right_array = np.array(left_ids, np.int64), np.array(right_ids, np.int64)
    order = np.lexsort((right_array, left_array, np.array(ranks, np.float64)))
    return [(tokens[left_ids[k]], tokens[right_ids[k]]) for k in order.tolist()]


def _gguf_merges(fields: dict[str, object], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """`tokenizer.ggml.merges` ("left right" strings) as pairs; split as llama.cpp does.

    Merges naming pieces outside the vocab are dropped (tokenizers' BPE refuses them; llama.cpp
    never produces such a piece either).
    """
    merges = []
    for merge in fields.get("tokenizer.ggml.merges") or []:
        cut = merge.find(" ", 1)  # from 1: a byte-level piece may itself be a bare space
        if cut < 0:
            raise ValueError(f"tokenizer.ggml.merges: malformed merge {merge!r}")
        left, right = merge[:cut], merge[cut + 1 :]
        if left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    return merges


def build_gguf_hf_tokenizer(fields: dict[str, object]) -> HFTokenizer:
    """A ``tokenizers.Tokenizer`` rebuilt from GGUF ``tokenizer.ggml.*`` metadata.

    ``gpt2`` models get byte-level BPE with the pre-tokenizer ``tokenizer.ggml.pre`` names;
    ``llama`` (SentencePiece) models get score-ranked BPE with byte fallback. Control, unknown and
    user-defined tokens are added tokens, as in llama.cpp.

    Raises:
        ValueError: naming the metadata key that is missing, malformed or unsupported.
    """
    model = fields.get("tokenizer.ggml.model")
    tokens = list(fields.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ValueError("tokenizer.ggml.tokens: missing or empty")
    types = list(fields.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens))
    # First id wins on duplicate pieces.
    vocab = dict(zip(reversed(tokens), range(len(tokens) - 1, -1, -1), strict=True))
    if model == "gpt2":
        pre = str(fields.get("tokenizer.ggml.pre", "default"))
        pre_tokenizer, ignore_merges = _gpt2_pre_tokenizer(pre)
        hf = HFTokenizer(BPE(vocab, _gguf_merges(fields, vocab), ignore_merges=ignore_merges))
        hf.pre_tokenizer = pre_tokenizer
        hf.decoder = decoders.ByteLevel()
    elif model == "llama":
        scores = list(fields.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        unk = tokens[int(fields.get("tokenizer.ggml.unknown_token_id", 0))]
        merges = _spm_merges(tokens, scores, types, vocab)
        hf = HFTokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        # llama.cpp prefixes a space to every text fragment (also after special tokens) even if
        # it already starts with one, unlike tokenizers' Metaspace; a normalizer does the same.
        replace = normalizers.Replace(" ", "▁")
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if fields.get("tokenizer.ggml.add_space_prefix", True):
            hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace])
            steps.append(decoders.Strip(" ", 1, 0))
        else:
            hf.normalizer = replace
        hf.decoder = decoders.Sequence(steps)
    else:
        raise ValueError(f"tokenizer.ggml.model: unsupported tokenizer model {model!r}")
    # Control/unknown tokens are special: parsed in text, skipped by decode(skip_special_tokens).
    # User-defined ones are parsed as one token too but, as in llama.cpp, stay in decoded text.
    added = [
        AddedToken(tokens[i], special=t != _TOKEN_USER_DEFINED, normalized=False)
        for i, t in enumerate(types)
        if t in (_TOKEN_CONTROL, _TOKEN_UNKNOWN, _TOKEN_USER_DEFINED)
    ]
    hf.add_special_tokens([tok for tok in added if tok.special])
    hf.add_tokens([tok for tok in added if not tok.special])
    return hf
