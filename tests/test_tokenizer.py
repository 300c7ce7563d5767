"""kaon.tokenizer against llama.cpp's tokenization of the default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from kaon.tokenizer import Tokenizer

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "smollm2_tokenization.json").read_text(encoding="utf-8")
)
CASES = FIXTURE["cases"]
IM_START, IM_END, ENDOFTEXT = 1, 2, 0


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_encode_matches_llama_cpp(smollm2_tokenizer: Tokenizer, case: dict) -> None:
    # add_bos_token is False in the GGUF, so add_special_tokens adds nothing.
    assert smollm2_tokenizer.encode(case["text"]) == case["ids"]
    assert smollm2_tokenizer.encode(case["text"], add_special_tokens=False) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_decode_round_trip(smollm2_tokenizer: Tokenizer, case: dict) -> None:
    ids = case["ids"]
    assert smollm2_tokenizer.decode(ids, skip_special_tokens=False) == case["text"]
    token_bytes = b"".join(smollm2_tokenizer.id_to_token_bytes(i) for i in ids)
    assert token_bytes == case["text"].encode("utf-8")


def test_special_tokens_and_metadata(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    assert tok.vocab_size == 49152
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos_token) == (IM_START, IM_END, False)
    # eos (<|im_end|>) plus <|endoftext|>, which llama.cpp also treats as end of generation.
    assert tok.eos_token_ids == {IM_END, ENDOFTEXT}
    assert tok.all_special_ids == list(range(17))  # the 17 control tokens of the GGUF
    assert tok.is_byte_level
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids == [IM_START, 4093, 198, 26843, IM_END]
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>"]
    assert tok.decode(ids) == "user\nHi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nHi<|im_end|>"
    # The emoji's 4 bytes are split over byte-level tokens.
    assert tok.encode("😀") == [10813, 242, 218]
    assert [tok.id_to_token_bytes(i) for i in (10813, 242, 218)] == [b"\xf0\x9f", b"\x98", b"\x80"]
    assert tok.decode([10813, 242]) == "\ufffd"
    with pytest.raises(ValueError, match="token_id"):
        tok.id_to_token_bytes(49152)
    with pytest.raises(ValueError, match="ids"):
        tok.convert_ids_to_tokens([5, 10**6])


def test_add_bos_token(default_gguf_metadata: dict[str, object]) -> None:
    tok = Tokenizer.from_gguf({**default_gguf_metadata, "tokenizer.ggml.add_bos_token": True})
    assert tok.add_bos_token
    assert tok.encode("Hi") == [IM_START, 26843]
    assert tok.encode("Hi", add_special_tokens=False) == [26843]


def test_unsupported_model_and_unknown_pre(
    default_gguf_metadata: dict[str, object],
    smollm2_tokenizer: Tokenizer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model"):
        Tokenizer.from_gguf({**default_gguf_metadata, "tokenizer.ggml.model": "bert"})
    with caplog.at_level(logging.WARNING, logger="kaon.tokenizer"):
        tok = Tokenizer.from_gguf({**default_gguf_metadata, "tokenizer.ggml.pre": "no-such-pre"})
    assert "no-such-pre" in caplog.text
    # The plain GPT-2 regex splits "  12345" as " " + " 12345" (no "Ġ1" in the vocab: "Ġ", "1",
    # ...); the smollm pre-tokenizer splits off every digit first and keeps "ĠĠ" whole.
    assert tok.encode("  12345 apples") == [216, 216, 33, 34, 35, 36, 37, 13855]
    assert smollm2_tokenizer.encode("  12345 apples") == [256, 33, 34, 35, 36, 37, 13855]


def test_chat_template(smollm2_tokenizer: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert smollm2_tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without a system message the template inserts its own; no generation prompt on request.
    only_user = [{"role": "user", "content": "Hi"}]
    assert smollm2_tokenizer.apply_chat_template(only_user, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_chat_template_content_parts(smollm2_tokenizer: Tokenizer) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": parts}]
    assert smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello\nworld<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ("hello", "messages"),
        (["hello"], r"messages\[0\]"),
        ([{"content": "no role"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], r"messages\[1\]"),
        ([{"role": "user"}], r"messages\[0\]\.content"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], r"messages\[0\]\.content\[0\]"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], r"content\[0\]\.text"),
    ],
)
def test_chat_template_bad_messages(
    smollm2_tokenizer: Tokenizer, messages: object, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        smollm2_tokenizer.apply_chat_template(messages)  # type: ignore[arg-type]


def test_chat_template_errors(default_gguf_metadata: dict[str, object]) -> None:
    fields = {k: v for k, v in default_gguf_metadata.items() if k != "tokenizer.chat_template"}
    tok = Tokenizer.from_gguf(fields)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(ValueError, match="messages: .*user first"):
        tok.apply_chat_template([{"role": "system", "content": "S"}], chat_template=strict)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "é"}],
        chat_template="{{ bos_token }}{{ messages | tojson }}{{ tools | length }}",
        tools=[{"type": "function"}],
    )
    assert rendered == '<|im_start|>[{"role": "user", "content": "é"}]1'


def test_from_hf_dir(smollm2_tokenizer: Tokenizer, tmp_path: Path) -> None:
    smollm2_tokenizer._hf.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}
    config["chat_template"] = smollm2_tokenizer.chat_template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos_token) == (IM_START, IM_END, False)
    assert tok.eos_token_ids == {IM_END, ENDOFTEXT, 7}
    assert tok.is_byte_level and tok.vocab_size == 49152
    assert tok.chat_template == smollm2_tokenizer.chat_template
    for case in CASES:
        assert tok.encode(case["text"]) == case["ids"]
    assert tok.id_to_token_bytes(10813) == b"\xf0\x9f"


def test_from_hf_dir_post_processor_adds_bos(smollm2_tokenizer: Tokenizer, tmp_path: Path) -> None:
    hf = HFTokenizer.from_str(smollm2_tokenizer._hf.to_str())
    hf.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", IM_START)]
    )
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.add_bos_token and tok.eos_token_id is None
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == "<|im_start|>Hi"
    assert tok.encode("Hi") == [IM_START, 26843]
    assert tok.encode("Hi", add_special_tokens=False) == [26843]
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_hf_dir(tmp_path / "missing")


def spm_reference(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) for one text fragment: merge the
    adjacent pair with the best-scoring vocab entry (leftmost on ties); unknown characters fall
    back to <0xXX> byte tokens."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    symbols = list(("▁" + text).replace(" ", "▁"))
    while True:
        pairs = [(k, symbols[k] + symbols[k + 1]) for k in range(len(symbols) - 1)]
        pairs = [(-scores[vocab[merged]], k) for k, merged in pairs if merged in vocab]
        if not pairs:
            break
        _, k = min(pairs)
        symbols[k : k + 2] = [symbols[k] + symbols[k + 1]]
    ids = []
    for symbol in symbols:
        if symbol in vocab:
            ids.append(vocab[symbol])
        else:
            ids.extend(vocab[f"<0x{b:02X}>"] for b in symbol.encode("utf-8"))
    return ids


def test_spm_tiny_vocab(tiny_spm_fields: dict[str, object]) -> None:
    tok = Tokenizer.from_gguf(tiny_spm_fields)
    assert not tok.is_byte_level and tok.add_bos_token  # llama.cpp's default for SPM
    assert tok.encode("hello world") == [1, 23, 25]
    assert tok.encode("hello world", add_special_tokens=False) == [23, 25]
    assert tok.encode("hi!", add_special_tokens=False) == [26, 3]  # "!" -> byte token <0x21>
    assert tok.encode("hé", add_special_tokens=False) == [20, 4, 5]  # "é" -> <0xC3> <0xA9>
    assert tok.encode(" hello", add_special_tokens=False) == [6, 23]  # prefix added anyway
    # As in llama.cpp, the text after a special token gets its own space prefix.
    assert tok.encode("<s>hello</s>", add_special_tokens=False) == [1, 23, 2]
    tokens, scores = (
        tiny_spm_fields["tokenizer.ggml.tokens"],
        tiny_spm_fields["tokenizer.ggml.scores"],
    )
    for text in ["hello world", "hi!", "hé", " hello", "hello  world", "world hello hi", "hell"]:
        assert tok.encode(text, add_special_tokens=False) == spm_reference(text, tokens, scores)
    assert tok.decode([1, 23, 25, 2]) == "hello world"
    assert tok.decode([20, 4, 5]) == "hé"
    assert [tok.id_to_token_bytes(i) for i in (23, 4, 3)] == [b" hello", b"\xc3", b"!"]
    assert tok.eos_token_ids == {2} and tok.all_special_ids == [0, 1, 2]
