"""Abstract inputs of the compiled programs (ShapeDtypeStructs with shardings: nothing is allocated) and the
per-device bytes of trees and compiled programs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from xllava_jax import sharding
from xllava_jax.models.llava import LlavaConfig


def abstract_batch(config: Any, cfg: Any, mesh: Any) -> dict:
    """ShapeDtypeStructs of one global training batch (as inputs.host_batch makes it), sharded by row."""
    b, t = config.train.batch_size, config.data.max_len
    shapes = {k: ((b, t), jnp.int32) for k in ("input_ids", "labels", "attention_mask", "positions", "segment_ids")}
    if isinstance(cfg, LlavaConfig) and config.stage in (1, 2):
        s = cfg.vision.image_size
        shapes["pixel_values"] = ((b, config.data.max_images_per_row, s, s, 3), jnp.float32)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in shapes.items()}


def leaf_bytes(tree: Any) -> int:
    """Per-device bytes of a tree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def program_bytes(compiled: Any) -> tuple[int, int]:
    """(temporaries, total) bytes per device of a compiled program (the compiler's memory_analysis: arguments
    and outputs not aliased, temporaries, code)."""
    mem = compiled.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    return mem.temp_size_in_bytes, total


def with_layers(cfg: Any, text: int, vision: int) -> Any:
    """`cfg` unrolled (scan_layers False) with `text` decoder and `vision` CLIP layers."""
    if not isinstance(cfg, LlavaConfig):
        return dataclasses.replace(cfg, num_hidden_layers=text, scan_layers=False)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_hidden_layers=text, scan_layers=False),
                               vision=dataclasses.replace(cfg.vision, num_hidden_layers=vision, scan_layers=False))


def matmul_params(text: Any) -> float:
    """Decoder matmul parameters (no embedding table)."""
    h, i, n = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    kv = text.num_key_value_heads * text.dim_per_head
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + h * text.vocab_size
