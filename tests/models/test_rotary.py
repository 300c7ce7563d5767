"""RoPE tables against transformers' own implementation (default and llama3 scaling)."""

import pytest
import torch

from kaon.layers.rotary import RotaryEmbedding, apply_rotary


def reference_rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor):
    """Hugging Face's apply_rotary_pos_emb with rotate_half, in float64."""
    freqs = torch.outer(positions.double(), inv_freq.double())
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)
    x1, x2 = x.double().chunk(2, dim=-1)
    return x.double() * cos + torch.cat((-x2, x1), dim=-1) * sin


@pytest.mark.parametrize(
    "scaling",
    [
        None,
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192},
    ],
)  # fmt: skip
def test_rotary_matches_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim, theta = 64, 500000.0
    rope = RotaryEmbedding(head_dim, 4096, theta, scaling)
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=theta,
        rope_scaling=scaling, max_position_embeddings=4096,
    )  # fmt: skip
    if scaling is None:
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    positions = torch.tensor([0, 1, 7, 100, 4000])
    x = torch.randn(5, 3, head_dim)
    ours = apply_rotary(x, *rope.lookup(positions))
    expected = reference_rotate(x, positions, inv_freq)
    # float32 cos/sin tables at positions up to 4,000 radians: about 1e-4 of rounding.
    assert (ours.double() - expected).abs().max().item() < 1e-3
