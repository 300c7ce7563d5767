"""kaon.gguf_reader.GGUFFileReader returns what gguf-py's GGUFReader returns, and reads a
262,144-token vocabulary (Gemma 3's) faster than gguf-py reads one 16 times smaller, measured in
the same test (no absolute times)."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from kaon.gguf_reader import GGUFFileReader
from kaon.tokenizer import read_gguf_metadata


def _write(path, num_tokens: int) -> str:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_name("tiny ünïcode ✓")
    writer.add_rope_freq_base(10_000.0)
    writer.add_bool("test.flag", True)
    writer.add_array("test.bools", [True, False, True])
    writer.add_array("test.floats", [0.5, -1.25])
    writer.add_array("test.empty", [])
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>", " ", "日本", "😀", *[f"▁t{i}" for i in range(num_tokens - 6)]]
    writer.add_token_list(tokens)
    writer.add_token_scores([float(-i) for i in range(num_tokens)])
    writer.add_token_types([2, 3, 3, *[1] * (num_tokens - 3)])
    writer.add_token_merges(["▁ t", "t 1"])
    writer.add_tensor("output_norm.weight", np.arange(8, dtype=np.float32))
    raw = gguf.quants.quantize(np.ones((4, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _contents(reader) -> dict[str, object]:
    return {name: field.contents() for name, field in reader.fields.items()}


def test_same_fields_and_tensors_as_gguf_py(tmp_path):
    path = _write(tmp_path / "a.gguf", 300)
    ours, theirs = GGUFFileReader(path), gguf.GGUFReader(path)
    expected = _contents(theirs)
    assert _contents(ours) == expected
    assert {k: type(v) for k, v in _contents(ours).items()} == {
        k: type(v) for k, v in expected.items()
    }
    assert expected["tokenizer.ggml.tokens"][3:6] == [" ", "日本", "😀"]
    assert ours.fields["tokenizer.ggml.tokens"].contents(4) == "日本"
    assert ours.fields["tokenizer.ggml.scores"].contents(2) == -2.0
    assert ours.data_offset == theirs.data_offset
    for mine, reference in zip(ours.tensors, theirs.tensors, strict=True):
        assert (mine.name, mine.tensor_type, mine.data_offset) == (
            reference.name, reference.tensor_type, reference.data_offset,
        )  # fmt: skip
        assert np.array_equal(mine.data, reference.data)


def test_truncated_string_array_is_an_error(tmp_path):
    path = _write(tmp_path / "a.gguf", 300)
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: data.index("▁t200".encode())])
    with pytest.raises(ValueError, match="past the end"):
        GGUFFileReader(str(cut))


def test_gemma3_vocabulary_reads_faster_than_gguf_py_reads_a_16x_smaller_one(
    tmp_path, gemma3_gguf_path
):
    small = _write(tmp_path / "small.gguf", 262_144 // 16)
    start = time.perf_counter()
    _contents(gguf.GGUFReader(small))
    reference_s = time.perf_counter() - start
    start = time.perf_counter()
    metadata = read_gguf_metadata(gemma3_gguf_path)  # 262,144 tokens, scores and types
    ours_s = time.perf_counter() - start
    assert len(metadata["tokenizer.ggml.tokens"]) == 262_144
    assert metadata["tokenizer.ggml.tokens"][2] == "<bos>"
    assert ours_s < reference_s, (ours_s, reference_s)
