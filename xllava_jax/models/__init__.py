"""Flax models: CLIP vision tower, projector, LLaMA decoder, and LLaVA composing them."""

from xllava_jax.models.clip import CLIPVisionConfig, CLIPVisionTransformer
from xllava_jax.models.layers import ExecConfig
from xllava_jax.models.llama import KVCache, Llama, LlamaConfig, init_cache
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.models.params import abstract_params, build_model, init_params, param_logical_axes
from xllava_jax.models.projector import Projector
