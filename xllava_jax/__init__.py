"""xllava-jax: multilingual LLaVA-style vision-language models in JAX/Flax."""

__version__ = "0.1.0"
