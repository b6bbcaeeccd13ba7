"""Inference: KV-cache generation (`generate`, `Engine`), sampling, chat and question answering."""

from xllava_jax.infer.generate import Engine, Generation, GenerationConfig, generate
from xllava_jax.infer.sampling import SamplingConfig
