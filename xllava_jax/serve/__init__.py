"""Serving a checkpoint as LLaVA users expect: an OpenAI-compatible chat-completions API with continuous
batching and streaming, and a chat page (``python -m xllava_jax.serve``)."""
