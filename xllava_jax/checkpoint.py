"""Orbax checkpoint layout shared by training and conversion.

A checkpoint is a directory with Orbax items: `params` (the param pytree), `model_config`
(JSON, so export needs nothing else) and, for training steps, `opt_state` and
`data_state`. A training workdir keeps one such directory per step under
`<workdir>/checkpoints/<step>/`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from xllava_jax.models.params import ModelConfig, abstract_params, config_from_dict, config_to_dict

log = logging.getLogger(__name__)

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


def load_params(path: str | os.PathLike, shardings: Any = None, to_host: bool = False) -> tuple[ModelConfig, Any]:
    """(model config, params) of a checkpoint; `shardings` (a pytree like the params) places
    each array directly on its devices; `to_host` reads NumPy arrays into host memory (no device holds
    the model: what training start-up places with the step's shardings); otherwise params land on the
    first local device, whatever mesh or number of processes wrote the checkpoint."""
    directory = resolve(path).absolute()
    cfg = load_config(directory)
    abstract = abstract_params(cfg)
    if to_host:
        target = jax.tree_util.tree_map(lambda a: np.empty(a.shape, a.dtype), abstract)  # pages untouched until read
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(directory, args=ocp.args.Composite(**{
                PARAMS: ocp.args.StandardRestore(target)}))
        return cfg, restored[PARAMS]
    if shardings is None:
        shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
                                           abstract)
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract, shardings)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(directory, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract)}))
    return cfg, restored[PARAMS]


# ---- training checkpoints: <workdir>/checkpoints/<step>/{params, opt_state, data_state, train_state, model_config}

OPT_STATE = "opt_state"
DATA_STATE = "data_state"
TRAIN_STATE = "train_state"
ITEMS = (PARAMS, OPT_STATE, DATA_STATE, TRAIN_STATE, MODEL_CONFIG)


def load_train_state(path: str | os.PathLike) -> dict:
    """The `train_state` JSON of a training checkpoint (step, stage, and the prompt template and instruction the
    model was trained with); {} for a checkpoint without one (e.g. converted from HF)."""
    directory = resolve(path).absolute()
    if not (directory / TRAIN_STATE).is_dir():
        return {}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        raw = checkpointer.restore(directory, args=ocp.args.Composite(**{TRAIN_STATE: ocp.args.JsonRestore()}))
    return dict(raw[TRAIN_STATE] or {})


def all_process_states(state: dict) -> dict:
    """{"processes": [state of process 0, 1, ...]}: every process's data-iterator state, gathered (a collective:
    all processes call it), since the JSON item is written by the primary process alone."""
    if jax.process_count() == 1:
        return {"processes": [state]}
    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return {"processes": [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]}


def this_process_state(saved: dict) -> dict | None:
    """This process's data-iterator state from `all_process_states` output; None (start the data afresh) when
    the checkpoint was written by a different number of processes."""
    states = saved.get("processes", [saved])
    if len(states) != jax.process_count():
        log.warning(
            "checkpoint holds data-iterator states of %d processes, this run has %d: the data order restarts "
            "(model and optimizer state resume exactly)", len(states), jax.process_count())
        return None
    return states[jax.process_index()]


class TrainCheckpoints:
    """Orbax CheckpointManager over a workdir: async saves, keep-N, the latest *complete* step on restore.

    A step directory becomes visible only once Orbax has finalized it, so a save cut short by a kill
    leaves a temporary directory that is ignored (and cleaned up) by the next run.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, train_state: dict, cfg: ModelConfig,
             force: bool = True) -> bool:
        """Start saving one step (returns once arrays are copied off the devices; writing goes on async)."""
        return self.manager.save(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), OPT_STATE: ocp.args.StandardSave(opt_state),
            DATA_STATE: ocp.args.JsonSave(data_state), TRAIN_STATE: ocp.args.JsonSave(train_state),
            MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(cfg))}), force=force)

    def restore(self, step: int, abstract_params_tree: Any, abstract_opt_state: Any) -> dict:
        """{params, opt_state, data_state, train_state} of `step`, arrays placed by the abstract trees' shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract_params_tree), OPT_STATE: ocp.args.StandardRestore(abstract_opt_state),
            DATA_STATE: ocp.args.JsonRestore(), TRAIN_STATE: ocp.args.JsonRestore()}))
        return {k: restored[k] for k in (PARAMS, OPT_STATE, DATA_STATE, TRAIN_STATE)}

    def step_dir(self, step: int) -> Path:
        """Directory of one step."""
        return self.directory / str(step)

    def wait(self) -> None:
        """Block until pending async saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.close()
