"""Building a model from its config, initialising plain-dict params, and their logical axes."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xllava_jax.models.clip import CLIPVisionConfig, CLIPVisionTransformer
from xllava_jax.models.llama import Llama, LlamaConfig
from xllava_jax.models.llava import Llava, LlavaConfig

ModelConfig = LlavaConfig | LlamaConfig | CLIPVisionConfig
MODELS = {LlavaConfig: Llava, LlamaConfig: Llama, CLIPVisionConfig: CLIPVisionTransformer}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The Flax module for a config (validated first)."""
    cfg.validate()
    return MODELS[type(cfg)](cfg)


def dummy_inputs(cfg: ModelConfig) -> dict[str, jax.Array]:
    """Smallest inputs that touch every parameter (for init and shape inference)."""
    if isinstance(cfg, LlamaConfig):
        return {"input_ids": jnp.zeros((1, 1), jnp.int32)}
    vision = cfg.vision if isinstance(cfg, LlavaConfig) else cfg
    pixels = jnp.zeros((1, vision.image_size, vision.image_size, vision.num_channels), jnp.float32)
    if isinstance(cfg, CLIPVisionConfig):
        return {"pixel_values": pixels}
    return {"input_ids": jnp.full((1, cfg.num_image_tokens), cfg.image_token_id, jnp.int32), "pixel_values": pixels}


def _init_boxed(cfg: ModelConfig, rng: jax.Array) -> Any:
    return build_model(cfg).init(rng, **dummy_inputs(cfg))["params"]


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Randomly initialised parameters as a plain nested dict."""
    return nn.unbox(_init_boxed(cfg, rng))


def init_group(cfg: LlavaConfig, group: str, rng: jax.Array) -> dict:
    """Random params of one LLaVA group ('projector' or 'vision_tower') alone, equal to init_params(cfg)[group]
    (flax derives each submodule's key from its path) without building the other towers."""
    v = cfg.vision
    if group == "projector":
        x = jnp.zeros((1, 1, v.hidden_size), jnp.float32)
        fn = lambda m, x: m.projector(x)  # noqa: E731
    elif group == "vision_tower":
        x = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
        fn = lambda m, x: m.vision_tower(x, cfg.vision_feature_layer)  # noqa: E731
    else:
        raise ValueError(f"init_group: group {group!r}; expected 'projector' or 'vision_tower'")
    return nn.unbox(build_model(cfg).init(rng, x, method=fn)["params"][group])


@functools.lru_cache(maxsize=32)
def _abstract_boxed(cfg: ModelConfig) -> Any:
    return jax.eval_shape(lambda: _init_boxed(cfg, jax.random.PRNGKey(0)))  # a trace of the whole model: cached


def abstract_params(cfg: ModelConfig) -> dict:
    """Parameter shapes and dtypes (jax.ShapeDtypeStruct), without allocating anything."""
    return nn.unbox(_abstract_boxed(cfg))


def param_logical_axes(cfg: ModelConfig) -> dict:
    """A PartitionSpec of logical axis names for every parameter."""
    return nn.get_partition_spec(_abstract_boxed(cfg))


def with_towers(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """The config with `changes` to every tower's ExecConfig fields (dtype, param_dtype, cpu_matvec, ...)."""
    if isinstance(cfg, LlavaConfig):
        return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **changes),
                                   text=dataclasses.replace(cfg.text, **changes))
    return dataclasses.replace(cfg, **changes)


def with_param_dtype(cfg: ModelConfig, dtype: str) -> ModelConfig:
    """The config with every tower's param_dtype set to `dtype`."""
    return with_towers(cfg, param_dtype=dtype)


def config_to_dict(cfg: LlavaConfig | LlamaConfig) -> dict:
    """A JSON-ready dict of a model config, tagged with its kind ('llava' or 'llama')."""
    return {"kind": "llava" if isinstance(cfg, LlavaConfig) else "llama", **dataclasses.asdict(cfg)}


def config_from_dict(raw: dict) -> LlavaConfig | LlamaConfig:
    """Inverse of config_to_dict."""
    raw = dict(raw)
    kind = raw.pop("kind", "llava")
    if kind == "llama":
        return LlamaConfig(**raw)
    if kind != "llava":
        raise ValueError(f"unknown model kind {kind!r} in model config; expected 'llava' or 'llama'")
    return LlavaConfig(vision=CLIPVisionConfig(**raw.pop("vision")), text=LlamaConfig(**raw.pop("text")), **raw)
