"""Bad GGUF input fails with a ValueError naming the file, the tensor or type, and what kaon
supports. The files are tiny ones written with the gguf package's writer."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from kaon.models.loader.loader import load_model


def _write(path, arch: str = "llama", quant_type=None) -> str:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_context_length(64)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
    writer.add_token_scores([0.0] * 4)
    writer.add_token_types([2, 3, 3, 1])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    if quant_type is not None:  # one row of 32 columns per block
        block_size, type_size = gguf.GGML_QUANT_SIZES[quant_type]
        raw = np.zeros((32, 32 // block_size * type_size), dtype=np.uint8)
        writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=quant_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _load(path: str) -> None:
    load_model(path, torch.float32, torch.device("cpu"))


def test_unknown_architecture_names_file_and_supported(tmp_path):
    path = _write(tmp_path / "mamba.gguf", arch="mamba9")
    with pytest.raises(ValueError) as error:
        _load(path)
    message = str(error.value)
    assert path in message and "'mamba9' is not supported" in message
    assert "llama, qwen2, gemma3" in message


def test_unknown_quant_type_names_file_tensor_type_and_supported(tmp_path):
    path = _write(tmp_path / "q81.gguf", quant_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(ValueError) as error:
        _load(path)
    message = str(error.value)
    assert path in message and "tensor blk.0.attn_q.weight has type Q8_1, which kaon" in message
    assert "supported types: F32, F16, BF16, Q4_0" in message and "Q4_K" in message


@pytest.mark.parametrize("keep_bytes", [200, -100])
def test_truncated_file_names_file_and_size(tmp_path, keep_bytes):
    whole = _write(tmp_path / "whole.gguf")
    content = Path(whole).read_bytes()
    cut = content[:keep_bytes]
    path = tmp_path / "cut.gguf"
    path.write_bytes(cut)
    with pytest.raises(ValueError) as error:
        _load(str(path))
    message = str(error.value)
    assert f"{path} is not a valid GGUF file (truncated" in message
    assert f"{len(cut)} bytes" in message
