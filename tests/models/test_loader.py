"""Model loading: a Hugging Face directory equals the GGUF it was made from; bad paths and files
give clear errors naming what is wrong."""

import json

import pytest
import torch

from kaon import LLM, SamplingParams
from kaon.models.loader import load_model
from kaon.models.loader.gguf import architecture_from_metadata, iter_gguf_tensors, open_gguf
from kaon.tokenizer import read_gguf_metadata

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, default_gguf_path, smollm2_tokenizer):
    """The default model as a Hugging Face directory (config.json, safetensors, tokenizer)."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("smollm2-hf")
    metadata = read_gguf_metadata(default_gguf_path)
    arch = architecture_from_metadata(metadata)
    tensors = {
        f"model.{name}" if not name.startswith("lm_head") else name: tensor
        for name, tensor in iter_gguf_tensors(open_gguf(default_gguf_path), arch, torch.float32)
    }
    save_file(tensors, directory / "model.safetensors")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "vocab_size": arch.vocab_size,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (directory / "config.json").write_text(json.dumps(config))
    smollm2_tokenizer._hf.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": smollm2_tokenizer.chat_template,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    generation_config = {"eos_token_id": [2], "temperature": 0.0, "max_new_tokens": 7}
    (directory / "generation_config.json").write_text(json.dumps(generation_config))
    return directory


def test_hf_directory_generates_what_the_gguf_does(hf_dir, llm):
    from_dir = LLM(str(hf_dir), kv_cache_memory_bytes=50_000_000, max_model_len=1024)
    assert from_dir.engine.model_name == hf_dir.name
    params = SamplingParams(temperature=0, max_tokens=16)
    messages = [{"role": "user", "content": "Write a haiku about the sea"}]
    ours = from_dir.chat(messages, params, use_tqdm=False)[0].outputs[0]
    reference = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
    assert ours.token_ids == reference.token_ids and ours.text == reference.text
    assert 2 in from_dir.engine.eos_token_ids
    # generation_config.json supplies the defaults when no SamplingParams are given.
    defaults = from_dir.get_default_sampling_params()
    assert (defaults.temperature, defaults.max_tokens) == (0.0, 7)
    (output,) = from_dir.chat(messages, use_tqdm=False)
    assert output.outputs[0].token_ids == reference.token_ids[:7]


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/model.gguf", torch.float32, CPU)


def test_corrupt_gguf_header(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ValueError, match="not a valid GGUF"):
        load_model(str(bad), torch.float32, CPU)
    wrong_magic = tmp_path / "text.gguf"
    wrong_magic.write_text("hello")
    with pytest.raises(ValueError, match="not a valid GGUF"):
        load_model(str(wrong_magic), torch.float32, CPU)


def test_unknown_file_kind(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="neither a .gguf file nor a Hugging Face"):
        load_model(str(weights), torch.float32, CPU)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path), torch.float32, CPU)


def test_unsupported_hf_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported.*LlamaForCausalLM"):
        load_model(str(tmp_path), torch.float32, CPU)


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="general.architecture 'gpt2' is not supported"):
        load_model(str(path), torch.float32, CPU)


def test_directory_without_weights(tmp_path, hf_dir):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(str(tmp_path), torch.float32, CPU)
