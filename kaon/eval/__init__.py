"""Accuracy evaluation: ``kaon eval perplexity | generate | choice``."""
