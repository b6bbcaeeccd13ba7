"""Orbax checkpoint layout shared by training and conversion.

A checkpoint is a directory with Orbax items: `params` (the param pytree), `model_config`
(JSON, so export needs nothing else) and, for training steps, `opt_state` and
`data_state`. A training workdir keeps one such directory per step under
`<workdir>/checkpoints/<step>/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from xllava_jax.models.params import ModelConfig, abstract_params, config_from_dict, config_to_dict

PARAMS = "params"
MODEL_CONFIG = "model_config"


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory: `path` itself, or the latest complete step under it (a workdir or
    its checkpoints/ folder)."""
    path = Path(path)
    if (path / PARAMS).is_dir():
        return path
    for root in (path / "checkpoints", path):
        steps = sorted((p for p in root.glob("*") if p.name.isdigit() and (p / PARAMS).is_dir()),
                       key=lambda p: int(p.name)) if root.is_dir() else []
        if steps:
            return steps[-1]
    raise FileNotFoundError(f"no checkpoint in {path}: expected a '{PARAMS}' item or numbered step directories")


def save_params(directory: str | os.PathLike, params: Any, cfg: ModelConfig) -> Path:
    """Write params and the model config as a checkpoint directory (what hf-to-orbax produces)."""
    directory = Path(directory).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(cfg))}), force=True)
    return directory


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The model config stored in a checkpoint."""
    directory = resolve(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        raw = checkpointer.restore(directory, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))
    return config_from_dict(raw[MODEL_CONFIG])


def load_params(path: str | os.PathLike, shardings: Any = None) -> tuple[ModelConfig, Any]:
    """(model config, params) of a checkpoint; `shardings` (a pytree like the params) places
    each array directly on its devices, otherwise params land on the default device."""
    directory = resolve(path).absolute()
    cfg = load_config(directory)
    abstract = abstract_params(cfg)
    if shardings is not None:
        abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                          abstract, shardings)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(directory, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract)}))
    return cfg, restored[PARAMS]
