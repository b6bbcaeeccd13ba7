"""The train step: one jitted function, explicit in/out shardings, donated state.

loss = (summed shifted cross-entropy over labels != -100) / (trained tokens of the global batch)
       + consistency_weight * mean cross-modal consistency loss (loss.py)
Gradients are taken w.r.t. the trainable params only; the global batch is split into grad_accum
interleaved microbatches (row i -> microbatch i % grad_accum) scanned in the step. A non-finite
loss or gradient norm keeps the old params and optimizer state and counts the step.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, build_model
from xllava_jax.train import loss as losses
from xllava_jax import sharding
from xllava_jax.train import trainable
from xllava_jax.train.forward import forward
from xllava_jax.train.state import TrainState

def batch_shardings(batch_like: dict, mesh: Mesh) -> dict:
    """Every batch array sharded by row over (data, fsdp)."""
    return {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch_like.items()}


def microbatches(batch: dict, accum: int, mesh: Mesh) -> dict:
    """[B, ...] -> [accum, B / accum, ...], microbatch j holding rows j, j + accum, ..."""
    def split(x):
        x = jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
        spec = PartitionSpec(None, sharding.BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return jax.tree_util.tree_map(split, batch)


def consistency_images(batch: dict, cfg: LlavaConfig, slots: int) -> jax.Array:
    """Number of images in the batch whose sample has a trained token (the consistency loss's mean)."""
    valid, segment = losses.image_slots(batch["input_ids"], batch["segment_ids"], cfg.image_token_id,
                                        cfg.num_image_tokens, slots)
    trained = losses.answer_tokens(batch)
    has = jnp.any(trained[..., None] & (batch["segment_ids"][..., None] == segment[:, None, :]), axis=1)
    return jnp.sum(valid & has).astype(jnp.float32)


def make_loss_fn(cfg: ModelConfig, consistency_weight: float, consistency_text_grad: bool = False) -> Callable:
    """loss(trainable, frozen, microbatch, n_tokens, n_images) -> (loss, sums)."""
    model, is_llava = build_model(cfg), isinstance(cfg, LlavaConfig)

    def loss_fn(params_t, frozen, mb, n_tokens, n_images):
        out = forward(model, trainable.merge(params_t, frozen, is_llava), mb, is_llava)
        sums = losses.token_sums(out.logits, mb["labels"])
        loss = sums["nll"] / n_tokens
        if consistency_weight > 0:
            sums.update(losses.consistency_sums(out.embeds, out.image_features, mb, cfg.image_token_id,
                                                cfg.num_image_tokens, consistency_text_grad))
            loss = loss + consistency_weight * sums["cons"] / n_images
        return loss, sums
    return loss_fn


def train_step_fn(cfg: ModelConfig, tx: optax.GradientTransformation, lr_schedule: optax.Schedule, mesh: Mesh,
                  grad_accum: int = 1, consistency_weight: float = 0.0, consistency_text_grad: bool = False
                  ) -> Callable:
    """The un-jitted step (state, batch) -> (state, metrics)."""
    loss_fn = make_loss_fn(cfg, consistency_weight, consistency_text_grad)
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        n_tokens = jnp.maximum(jnp.sum(batch["labels"][:, 1:] != IGNORE_INDEX), 1).astype(jnp.float32)
        n_images = jnp.float32(1.0)
        if consistency_weight > 0:
            n_images = jnp.maximum(consistency_images(batch, cfg, batch["pixel_values"].shape[1]), 1.0)
        if grad_accum == 1:
            grads, sums = grad_fn(state.params, state.frozen, batch, n_tokens, n_images)
        else:
            def body(acc, mb):
                g, s = grad_fn(state.params, state.frozen, mb, n_tokens, n_images)
                return jax.tree_util.tree_map(jnp.add, acc, (g, s)), None
            zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
                grad_fn, state.params, state.frozen, jax.tree_util.tree_map(lambda x: x[:1], batch), n_tokens,
                n_images))
            (grads, sums), _ = jax.lax.scan(body, zeros, microbatches(batch, grad_accum, mesh))
        loss = sums["nll"] / n_tokens
        if consistency_weight > 0:
            loss = loss + consistency_weight * sums["cons"] / n_images
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        streak = jnp.where(ok, 0, state.nonfinite_streak + 1)
        metrics = {"loss": loss, "accuracy": sums["correct"] / n_tokens, "grad_norm": grad_norm,
                   "lr": lr_schedule(state.step - state.nonfinite_total), "trained_tokens": sums["tokens"],
                   "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32), "finite": ok,
                   "nonfinite_streak": streak}
        if consistency_weight > 0:
            metrics["consistency_loss"] = sums["cons"] / n_images
        new = state.replace(step=state.step + 1, params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state), nonfinite_streak=streak,
                            nonfinite_total=state.nonfinite_total + (1 - ok.astype(jnp.int32)))
        return new, metrics
    return step


def eval_step_fn(cfg: ModelConfig) -> Callable:
    """(params, batch) -> summed eval metrics (token sums; modality-gap sums when the batch has images)."""
    model, is_llava = build_model(cfg), isinstance(cfg, LlavaConfig)

    def step(params: dict, batch: dict) -> dict:
        out = forward(model, params, batch, is_llava)
        sums = losses.token_sums(out.logits, batch["labels"])
        if out.image_features is not None:
            sums.update(losses.modality_sums(out.embeds, out.image_features, batch, cfg.image_token_id,
                                             cfg.num_image_tokens))
        return sums
    return step


class in_mesh:  # noqa: N801 - used like a function wrapper
    """`fn` called (and so traced or lowered) with the mesh set and the logical-axis rules active."""

    def __init__(self, fn: Callable, mesh: Mesh, rules: Any):
        self.fn, self.mesh, self.rules = fn, mesh, rules

    def __call__(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.fn(*args)

    def lower(self, *args):
        """The jitted function lowered for `args` (arrays or ShapeDtypeStructs), e.g. for memory_analysis."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.fn.lower(*args)


def jit_train_step(step: Callable, state_shardings: TrainState, batch_like: dict, mesh: Mesh, rules: Any) -> Callable:
    """jax.jit of the step with explicit shardings and the state donated."""
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings(batch_like, mesh)),
                     out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    return in_mesh(jitted, mesh, rules)


def jit_eval_step(step: Callable, params_shardings: dict, batch_like: dict, mesh: Mesh, rules: Any) -> Callable:
    """jax.jit of the eval step with explicit shardings."""
    jitted = jax.jit(step, in_shardings=(params_shardings, batch_shardings(batch_like, mesh)),
                     out_shardings=sharding.replicated(mesh))
    return in_mesh(jitted, mesh, rules)
