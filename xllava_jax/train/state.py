"""The train state pytree and its shardings (params and optimizer state by the logical-axis rules)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, abstract_params, param_logical_axes
from xllava_jax import sharding
from xllava_jax.train import trainable


@flax.struct.dataclass
class TrainState:
    """Everything one step reads and writes; frozen params have no optimizer state."""

    step: jax.Array  # int32: steps taken (batches consumed), skipped ones included
    params: dict  # trainable groups
    frozen: dict  # frozen groups (never differentiated)
    opt_state: Any  # optimizer state of `params` only
    nonfinite_streak: jax.Array  # int32: non-finite steps in a row (reset by a good step)
    nonfinite_total: jax.Array  # int32: non-finite (skipped) steps so far


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Any) -> dict:
    """NamedSharding of every parameter of a model config, from its logical axes."""
    return sharding.tree_shardings(param_logical_axes(cfg), abstract_params(cfg), mesh, rules)


def opt_shardings(tx: optax.GradientTransformation, params_abstract: dict, params_shardings: dict, mesh: Mesh) -> Any:
    """Optimizer-state shardings: moments like their params, counters replicated."""
    abstract = jax.eval_shape(tx.init, params_abstract)
    return optax.tree_map_params(tx, lambda _, s: s, abstract, params_shardings,
                                 transform_non_params=lambda _: sharding.replicated(mesh))


def state_shardings(cfg: ModelConfig, groups: tuple[str, ...], tx: optax.GradientTransformation, mesh: Mesh,
                    rules: Any) -> TrainState:
    """A TrainState of NamedShardings."""
    is_llava = isinstance(cfg, LlavaConfig)
    shard_t, shard_f = trainable.split(param_shardings(cfg, mesh, rules), groups, is_llava)
    abstract_t, _ = trainable.split(abstract_params(cfg), groups, is_llava)
    rep = sharding.replicated(mesh)
    return TrainState(rep, shard_t, shard_f, opt_shardings(tx, abstract_t, shard_t, mesh), rep, rep)


def abstract_state(cfg: ModelConfig, groups: tuple[str, ...], tx: optax.GradientTransformation,
                   shardings: TrainState, frozen_dtype: str = "") -> TrainState:
    """ShapeDtypeStructs (with shardings) of the state: the restore target of a checkpoint. Frozen groups are
    stored as `frozen_dtype` ('' = like the trained ones)."""
    is_llava = isinstance(cfg, LlavaConfig)
    abstract_t, abstract_f = trainable.split(abstract_params(cfg), groups, is_llava)
    abstract_f = trainable.with_dtype(abstract_f, frozen_dtype)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    state = TrainState(scalar, abstract_t, abstract_f, jax.eval_shape(tx.init, abstract_t), scalar, scalar)
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


def new_state(params: dict, groups: tuple[str, ...], is_llava: bool, tx: optax.GradientTransformation,
              shardings: TrainState) -> TrainState:
    """A step-0 state of placed `params` (full tree) with a fresh optimizer state, on its shardings."""
    t, f = trainable.split(params, groups, is_llava)
    opt = jax.jit(tx.init, out_shardings=shardings.opt_state)(t)
    zero = lambda: jax.device_put(jnp.zeros((), jnp.int32), shardings.step)  # noqa: E731 (distinct buffers)
    return TrainState(zero(), t, f, opt, zero(), zero())
