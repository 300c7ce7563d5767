"""``kaon bench``: throughput and latency benchmarks, optionally side by side with transformers."""
