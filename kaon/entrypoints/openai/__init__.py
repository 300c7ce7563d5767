"""OpenAI-compatible HTTP server (``kaon serve``): FastAPI routes over an AsyncLLM."""
