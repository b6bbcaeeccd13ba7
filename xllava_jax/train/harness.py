"""A model config + trainable groups + optimizer settings -> sharded state and the jitted train step.

What the stage loop, the tests and the benchmark share; the loop adds data, checkpoints and metrics.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import jax
import optax
from jax.sharding import Mesh

from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig
from xllava_jax.train import trainable
from xllava_jax.train.initialize import place
from xllava_jax.train.optimizer import make_optimizer, schedule
from xllava_jax.sharding import DEFAULT_RULES
from xllava_jax.train.state import TrainState, abstract_state, new_state, state_shardings
from xllava_jax.train.step import in_mesh, jit_train_step, train_step_fn

if TYPE_CHECKING:  # type hints only: the GPU image has no ml_collections (bench/gpu_suite.py)
    import ml_collections


@dataclasses.dataclass
class Harness:
    """The pieces of one training setup."""

    cfg: ModelConfig
    groups: tuple[str, ...]
    tx: optax.GradientTransformation
    shardings: TrainState
    mesh: Mesh
    rules: Any
    step_fn: Callable  # un-jitted (state, batch) -> (state, metrics)
    frozen_dtype: str = ""  # storage dtype of the frozen groups ('' = param_dtype, like the trained ones)

    @property
    def is_llava(self) -> bool:
        return isinstance(self.cfg, LlavaConfig)

    def init_state(self, params: dict | None = None, seed: int = 0) -> TrainState:
        """A fresh state from host `params` (full tree) or random ones, placed on the shardings (frozen groups
        cast to frozen_dtype on the host, before placing)."""
        if params is not None:
            t, f = trainable.split(params, self.groups, self.is_llava)
            params = trainable.merge(t, trainable.with_dtype(f, self.frozen_dtype), self.is_llava)
        full = trainable.merge(self.shardings.params, self.shardings.frozen, self.is_llava)
        placed = in_mesh(place, self.mesh, self.rules)(self.cfg, params, full, seed)
        state = new_state(placed, self.groups, self.is_llava, self.tx, self.shardings)
        if params is None and self.frozen_dtype:
            state = state.replace(frozen=jax.jit(lambda f: trainable.with_dtype(f, self.frozen_dtype),
                                                 out_shardings=self.shardings.frozen, donate_argnums=0)(state.frozen))
        return state

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs (with shardings) of the state: what a checkpoint restores onto, what AOT compiles."""
        return abstract_state(self.cfg, self.groups, self.tx, self.shardings, self.frozen_dtype)

    def jit_step(self, batch_like: dict) -> Callable:
        """The jitted, donating step for batches shaped like `batch_like`."""
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_like.items()}
        return jit_train_step(self.step_fn, self.shardings, abstract, self.mesh, self.rules)

    def params(self, state: TrainState) -> dict:
        """The full params of a state."""
        return trainable.merge(state.params, state.frozen, self.is_llava)


def make_harness(cfg: ModelConfig, groups: tuple[str, ...], optim: ml_collections.ConfigDict, total_steps: int,
                 mesh: Mesh, rules: Any = DEFAULT_RULES, grad_accum: int = 1, consistency_weight: float = 0.0,
                 consistency_text_grad: bool = False, frozen_dtype: str = "") -> Harness:
    """Optimizer, state shardings and step for one training setup."""
    rules = tuple(tuple(r) for r in rules)
    tx = make_optimizer(optim, total_steps)
    shard = state_shardings(cfg, groups, tx, mesh, rules)
    step = train_step_fn(cfg, tx, schedule(optim, total_steps), mesh, grad_accum, consistency_weight,
                         consistency_text_grad)
    return Harness(cfg, tuple(groups), tx, shard, mesh, rules, step, frozen_dtype)


def stage_harness(config: ml_collections.ConfigDict, cfg: ModelConfig, total_steps: int, mesh: Mesh) -> Harness:
    """The harness of a stage config: its trainable groups, optimizer, rules, accumulation, consistency loss and
    frozen storage dtype (what the stage loop and the AOT tool compile)."""
    from xllava_jax.train.validate import trainable_groups
    return make_harness(cfg, trainable_groups(config), config.optim, total_steps, mesh, config.logical_axis_rules,
                        config.train.grad_accum, config.train.consistency_weight, config.train.consistency_text_grad,
                        config.model.frozen_dtype)

