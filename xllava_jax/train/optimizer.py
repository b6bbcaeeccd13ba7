"""AdamW with warmup + cosine by ratio, global-norm clipping, and no weight decay on norms and biases."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import optax

if TYPE_CHECKING:  # type hints only: the GPU image has no ml_collections (bench/gpu_suite.py)
    import ml_collections

NO_DECAY_LEAVES = ("bias", "scale")  # biases, RMSNorm and LayerNorm scales (HF Trainer's rule)


def decay_mask(params: dict) -> dict:
    """True for leaves that get weight decay: everything but biases and norm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_LEAVES, params)


def warmup_steps(optim: ml_collections.ConfigDict, total_steps: int) -> int:
    """Warmup length: ceil(warmup_ratio * total_steps), as HF Trainer."""
    return math.ceil(optim.warmup_ratio * total_steps)


def schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to optim.lr, then cosine to optim.end_lr_ratio * lr at total_steps."""
    warm = warmup_steps(optim, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warm, max(total_steps, warm + 1),
                                              optim.end_lr_ratio * optim.lr)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Clip (optim.clip_norm > 0) then AdamW with the decay mask."""
    adamw = optax.adamw(schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=optim.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw) if optim.clip_norm > 0 else adamw
