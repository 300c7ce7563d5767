"""Streaming GGUF load (row chunks copied into the allocated model) gives bit for bit the model
that the whole-tensor path builds, for a Llama file (q/k rows permuted) and a Gemma 3 file."""

import gguf
import numpy as np
import pytest
import torch

from kaon.models.loader import loader
from kaon.models.loader.gguf import (
    architecture_from_metadata,
    iter_gguf_row_chunks,
    iter_gguf_tensors,
    open_gguf,
    read_metadata,
)
from kaon.models.loader.stream import stream_into

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 96, 4, 2, 16, 40


def _write(path, arch: str) -> str:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_context_length(64)
    if arch == "gemma3":
        writer.add_sliding_window(8)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(VOCAB - 3)]])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([2, 3, 3, *[1] * (VOCAB - 3)])

    def add(name, rows, columns, quantize=False):
        values = rng.standard_normal((rows, columns)).astype(np.float32)
        if quantize:  # Q8_0 blocks, dequantized by the loader
            raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values.squeeze(0) if rows == 1 else values)

    add("token_embd.weight", VOCAB, HIDDEN, quantize=True)
    add("output_norm.weight", 1, HIDDEN)
    norms = ["attn_norm", "ffn_norm"]
    if arch == "gemma3":
        norms += ["post_attention_norm", "post_ffw_norm"]
    for i in range(2):
        add(f"blk.{i}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN, quantize=True)
        add(f"blk.{i}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"blk.{i}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        add(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN, quantize=True)
        add(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
        for norm in norms:
            add(f"blk.{i}.{norm}.weight", 1, HIDDEN)
        if arch == "gemma3":
            add(f"blk.{i}.attn_q_norm.weight", 1, HEAD_DIM)
            add(f"blk.{i}.attn_k_norm.weight", 1, HEAD_DIM)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_streaming_equals_whole_tensor_build(tmp_path, arch):
    reader = open_gguf(_write(tmp_path / f"{arch}.gguf", arch))
    config = architecture_from_metadata(read_metadata(reader))
    config.tie_word_embeddings = True
    whole = loader._build(
        config, dict(iter_gguf_tensors(reader, config, torch.float32)), torch.float32,
        torch.device("cpu"), None,
    )  # fmt: skip
    streamed = loader._build_streaming(
        config, reader, torch.float32, torch.device("cpu"), ("none", 32)
    )
    expected = dict(whole.named_parameters())
    assert sorted(expected) == sorted(n for n, _ in streamed.named_parameters())
    for name, param in streamed.named_parameters():
        assert torch.equal(param, expected[name]), name
    # Tiny chunks (two embedding rows at a time) fill the same rows.
    model = type(streamed)(config)
    chunks = iter_gguf_row_chunks(reader, config, torch.float32, chunk_bytes=2 * 4 * HIDDEN)
    stream_into(model, config, chunks)
    model.prepare_for_inference()
    for name, param in model.named_parameters():
        assert torch.equal(param, expected[name]), name
