"""Tensor parallelism: how layers are split across ranks, and the collectives that join them."""
