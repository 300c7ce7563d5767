"""Scheduling and KV cache bookkeeping: plain Python, no torch (tested without the model)."""
