"""Model loading: a .gguf file or a Hugging Face directory -> model, tokenizer, defaults."""

from kaon.models.loader.loader import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
