"""A 2-layer cut of the default model as a Hugging Face directory: real weights and tokenizer,
small enough that the lifecycle tests (worker exit, rank failure) start engines in seconds."""

import json

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_gguf_path, smollm2_tokenizer):
    from safetensors.torch import save_file

    from kaon.models.loader.gguf import architecture_from_metadata, iter_gguf_tensors, open_gguf
    from kaon.tokenizer import read_gguf_metadata

    directory = tmp_path_factory.mktemp("smollm2-2-layers")
    arch = architecture_from_metadata(read_gguf_metadata(default_gguf_path))
    reader = open_gguf(default_gguf_path)
    keep = ("token_embd.", "output_norm.", "blk.0.", "blk.1.")
    reader.tensors = [t for t in reader.tensors if t.name.startswith(keep)]
    tensors = {
        f"model.{name}": tensor for name, tensor in iter_gguf_tensors(reader, arch, torch.float32)
    }
    save_file(tensors, directory / "model.safetensors")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": 2,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "vocab_size": arch.vocab_size,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "eos_token_id": 2,
    }
    (directory / "config.json").write_text(json.dumps(config))
    smollm2_tokenizer._hf.save(str(directory / "tokenizer.json"))
    return directory
