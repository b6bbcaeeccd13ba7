"""Orbax checkpoint layout shared by training and conversion.

A checkpoint is a directory with Orbax items: `params` (the param pytree), `model_config`
(JSON, so export needs nothing else) and, for training steps, `opt_state`, `data_state`, `train_state`
(the `TrainRecord`: how the checkpoint was trained) and `tokenizer` (the tokenizer files it was trained
with, so inference, evaluation and export need no `--tokenizer`). A training workdir keeps one such
directory per step under `<workdir>/checkpoints/<step>/`. A stage with frozen parameter groups writes them once, at its start,
to `<workdir>/frozen/` (a params checkpoint of those groups at the precision they were loaded in); its
step directories then hold only the trained groups, list the frozen ones in `train_state`
(`frozen_groups`), and `load_params` merges the two.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from xllava_jax.models.cpu_kernels import require_copied
from xllava_jax.models.params import ModelConfig, abstract_params, config_from_dict, config_to_dict

log = logging.getLogger(__name__)

PARAMS = "params"
MODEL_CONFIG = "model_config"
FROZEN = "frozen"  # <workdir>/frozen: the stage's frozen groups, written once
TOKENIZER = "tokenizer"  # a training step's item: its tokenizer files (tokenizer.model and HF side files)
# the files of a tokenizer that travel with a checkpoint (tokenizer.model, plus an HF directory's added tokens)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.json")


@dataclasses.dataclass(frozen=True)
class TrainRecord:
    """How a checkpoint was trained: what inference, evaluation, the data CLI and export need to use it the way
    it was trained, and what a resumed run needs to continue (a checkpoint not written by training, e.g.
    converted from HF, has the empty record)."""

    step: int | None = None  # the optimizer step the checkpoint holds
    total_steps: int | None = None  # steps of the stage it was written in
    stage: int | None = None  # 0 causal LM, 1 projector alignment, 2 instruction tuning
    template: str | None = None  # conversation template of its training data (plain, vicuna_v1, ...)
    instruction: str | None = None  # instruction appended to short-answer questions in training (None: none)
    frozen_groups: tuple[str, ...] = ()  # parameter groups left to <workdir>/frozen, not in the step's params
    tokenizer_files: tuple[str, ...] = ()  # files in the step's `tokenizer` item (empty: it carries none)
    nonfinite_streak: int = 0  # non-finite steps in a row at `step`
    nonfinite_total: int = 0  # non-finite steps of the stage so far

    def to_json(self) -> dict:
        """The record as the JSON item `train_state`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict) -> "TrainRecord":
        """The record of a `train_state` item (one written before a field existed gets its default; keys this
        version does not know are ignored, with a warning)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            log.warning("train_state keys %s are not part of TrainRecord: ignored", unknown)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names})


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


class PendingArray:
    """A param not made yet: `make()` returns its array (of `shape` and `dtype`). save_params makes, writes and
    drops such params one at a time, so a conversion never holds the whole model."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, make: Callable[[], jax.Array]):
        self.shape, self.dtype, self.make = tuple(shape), np.dtype(dtype), make
        self.size, self.ndim = math.prod(self.shape), len(self.shape)


class _PendingArrayHandler(ocp.type_handlers.ArrayHandler):
    """Orbax's jax.Array handler (same files and metadata) for PendingArray leaves: each is made, written and
    released before the next is made."""

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.SaveArgs()] * len(values)
        for value, info, arg in zip(values, infos, args):
            array = value.make()
            for written in await super().serialize([array], [info], [arg]):
                written.result()
            del array
        return []


def _register_pending_handler() -> None:
    from orbax.checkpoint._src.metadata import array_metadata_store
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax warns that the handler's type name is jax.Array's: that is the point
    try:
        ocp.type_handlers.register_type_handler(
            PendingArray, _PendingArrayHandler(array_metadata_store=array_metadata_store.Store()), override=True)
    finally:
        absl.setLevel(level)


_register_pending_handler()


def save_params(directory: str | os.PathLike, params: Any, cfg: ModelConfig) -> Path:
    """Write params and the model config as a checkpoint directory (what hf-to-orbax produces), encoding one
    param's bytes (at least 1 GB) at a time: Orbax's default (96 GB) holds most of a 7B model a second time.
    PendingArray leaves are made one at a time as they are written."""
    require_copied(params, f"save a checkpoint to {directory}")
    directory = Path(directory).absolute()
    largest = max((x.size * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(params)), default=0)
    handler = ocp.CompositeCheckpointHandler(**{
        PARAMS: ocp.PyTreeCheckpointHandler(save_concurrent_gb=max(1, math.ceil(largest / 1e9))),
        MODEL_CONFIG: ocp.JsonCheckpointHandler()})
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save(directory, args=ocp.args.Composite(**{
            PARAMS: ocp.args.PyTreeSave(params), MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(cfg))}), force=True)
    return directory


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The model config stored in a checkpoint."""
    directory = resolve(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        raw = checkpointer.restore(directory, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))
    return config_from_dict(raw[MODEL_CONFIG])


def _restore_params(directory: Path, target: Any) -> Any:
    """The `params` item of a checkpoint directory, restored onto `target` (arrays or ShapeDtypeStructs)."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(directory, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]


def frozen_store(step_dir: str | os.PathLike) -> Path:
    """Where a training step directory (<workdir>/checkpoints/<step>) keeps its stage's frozen groups."""
    return Path(step_dir).absolute().parent.parent / FROZEN


def save_frozen(workdir: str | os.PathLike, frozen: dict, cfg: ModelConfig) -> Path:
    """Write a stage's frozen groups ({group: params}) once, to <workdir>/frozen (a collective)."""
    return save_params(Path(workdir) / FROZEN, frozen, cfg)


def load_frozen(step_dir: str | os.PathLike, groups: list[str], target: dict) -> dict:
    """The frozen groups a step directory refers to, restored onto `target` ({group: arrays or
    ShapeDtypeStructs}; their dtype decides the restored precision)."""
    store = frozen_store(step_dir)
    if not (store / PARAMS).is_dir():
        raise FileNotFoundError(f"checkpoint {step_dir} keeps its frozen groups {groups} in {store}, which is "
                                f"missing: copy the workdir's '{FROZEN}' folder along with its step directories")
    return _restore_params(store, {g: target[g] for g in groups})


def load_params(path: str | os.PathLike, shardings: Any = None, to_host: bool = False) -> tuple[ModelConfig, Any]:
    """(model config, params) of a checkpoint (a step's frozen groups merged in from its workdir's store);
    `shardings` (a pytree like the params) places each array directly on its devices; `to_host` reads NumPy
    arrays into host memory (no device holds the model: what training start-up places with the step's
    shardings); otherwise params land on the first local device, whatever mesh or number of processes wrote
    the checkpoint."""
    directory = resolve(path).absolute()
    cfg = load_config(directory)
    abstract = abstract_params(cfg)
    if to_host:
        target = jax.tree_util.tree_map(lambda a: np.empty(a.shape, a.dtype), abstract)  # pages untouched until read
    else:
        if shardings is None:
            shardings = jax.tree_util.tree_map(
                lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), abstract)
        target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, shardings)
    groups = list(read_record(directory).frozen_groups)
    if not groups:
        return cfg, _restore_params(directory, target)
    trained = _restore_params(directory, {k: v for k, v in target.items() if k not in groups})
    return cfg, {**load_frozen(directory, groups, target), **trained}


class LazyParam:
    """One param of a checkpoint, restored alone (as NumPy, in `dtype`) when something asks for its array:
    `lazy_params` trees let an export hold one param at a time instead of the whole model."""

    def __init__(self, directory: Path, names: tuple[str, ...], shape: tuple[int, ...], stored: Any, dtype: Any = None):
        self.directory, self.names, self.shape, self.stored = directory, names, tuple(shape), np.dtype(stored)
        self.dtype = np.dtype(dtype or stored)
        self.size = int(np.prod(self.shape))

    def astype(self, dtype: Any) -> "LazyParam":
        """The same param, cast to `dtype` when read."""
        return LazyParam(self.directory, self.names, self.shape, self.stored, dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        item: Any = np.empty(self.shape, self.stored)
        args: Any = ocp.RestoreArgs(restore_type=np.ndarray, dtype=self.stored)
        for name in reversed(self.names):
            item, args = {name: item}, {name: args}
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            tree = checkpointer.restore(self.directory, args=ocp.args.Composite(**{
                PARAMS: ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)}))[PARAMS]
        for name in self.names:
            tree = tree[name]
        return np.asarray(tree).astype(dtype or self.dtype, copy=False)


def lazy_params(path: str | os.PathLike) -> tuple[ModelConfig, Any]:
    """(model config, params as LazyParam leaves) of a checkpoint (a step's frozen groups read from its
    workdir's store): nothing is read until a leaf's array is asked for."""
    directory = resolve(path).absolute()
    cfg = load_config(directory)
    groups = set(read_record(directory).frozen_groups)
    if groups and not (frozen_store(directory) / PARAMS).is_dir():
        raise FileNotFoundError(f"checkpoint {directory} keeps its frozen groups {sorted(groups)} in "
                                f"{frozen_store(directory)}, which is missing")

    def lazy(key_path, spec):
        names = tuple(str(k.key) for k in key_path)
        store = frozen_store(directory) if names[0] in groups else directory
        return LazyParam(store, names, spec.shape, spec.dtype)
    return cfg, jax.tree_util.tree_map_with_path(lazy, abstract_params(cfg))


# ---- training checkpoints: <workdir>/checkpoints/<step>/{params, opt_state, data_state, train_state,
# model_config, tokenizer}

OPT_STATE = "opt_state"
DATA_STATE = "data_state"
TRAIN_STATE = "train_state"
ITEMS = (PARAMS, OPT_STATE, DATA_STATE, TRAIN_STATE, MODEL_CONFIG, TOKENIZER)


def read_record(path: str | os.PathLike) -> TrainRecord:
    """How the checkpoint at `path` (a step, or a workdir: its latest step) was trained; the empty record for a
    checkpoint that training did not write. FileNotFoundError when `path` holds no Orbax checkpoint."""
    directory = resolve(path).absolute()
    if not (directory / TRAIN_STATE).is_dir():
        return TrainRecord()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        raw = checkpointer.restore(directory, args=ocp.args.Composite(**{TRAIN_STATE: ocp.args.JsonRestore()}))
    return TrainRecord.from_json(dict(raw[TRAIN_STATE] or {}))


def tokenizer_files(tokenizer: str | os.PathLike) -> dict[str, str]:
    """{name in the checkpoint: source file} of a tokenizer (a SentencePiece model file, which a checkpoint
    carries as tokenizer.model, or an HF tokenizer directory; local or cloud paths) that a checkpoint carries."""
    path = epath.Path(tokenizer)
    if not path.is_dir():
        return {TOKENIZER_FILES[0]: str(path)}
    return {name: str(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}


def carried_tokenizer(path: str | os.PathLike) -> Path | None:
    """The tokenizer directory a checkpoint carries (the `tokenizer` item of a step, or of a workdir's latest
    step; a directory holding tokenizer.model itself, as an HF export does), or None."""
    path = Path(path)
    if (path / "tokenizer.model").is_file():
        return path
    try:
        directory = resolve(path)
    except FileNotFoundError:
        return None
    return directory / TOKENIZER if (directory / TOKENIZER / "tokenizer.model").is_file() else None


@dataclasses.dataclass
class FilesSave(ocp.args.CheckpointArgs):
    """Files copied into a checkpoint item's directory: {name there: source path}."""

    files: dict[str, str]


@dataclasses.dataclass
class FilesRestore(ocp.args.CheckpointArgs):
    """Restore of a files item: the paths of its files."""


class FilesHandler(ocp.CheckpointHandler):
    """An Orbax item that is a folder of files (the tokenizer a step was trained with), written by the primary
    process into the step's temporary directory, so it appears with the step or not at all."""

    def save(self, directory, args: FilesSave) -> None:
        """Copy the files into the item directory."""
        if jax.process_index() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            for name, source in args.files.items():
                (directory / name).write_bytes(epath.Path(source).read_bytes())

    def restore(self, directory, args: FilesRestore | None = None) -> tuple[Path, ...]:
        """The item's files."""
        return tuple(sorted(Path(directory).iterdir()))


ocp.args.register_with_handler(FilesHandler, for_save=True)(FilesSave)
ocp.args.register_with_handler(FilesHandler, for_restore=True)(FilesRestore)


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

    def save(self, params: Any, opt_state: Any, data_state: dict, record: TrainRecord, cfg: ModelConfig,
             tokenizer: dict[str, str] | None = None, force: bool = True) -> bool:
        """Start saving step `record.step` with the tokenizer files it was trained with (`tokenizer_files`;
        returns once arrays are copied off the devices; writing goes on async)."""
        tokenizer = tokenizer or {}
        record = dataclasses.replace(record, tokenizer_files=tuple(sorted(tokenizer)))
        return self.manager.save(record.step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), OPT_STATE: ocp.args.StandardSave(opt_state),
            DATA_STATE: ocp.args.JsonSave(data_state), TRAIN_STATE: ocp.args.JsonSave(record.to_json()),
            MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(cfg)),
            **({TOKENIZER: FilesSave(dict(tokenizer))} if tokenizer else {})}), force=force)

    def restore(self, step: int, abstract_params_tree: Any, abstract_opt_state: Any, abstract_frozen: dict) -> dict:
        """{params, frozen, opt_state, data_state, train_state (its TrainRecord)} of `step`, arrays placed (and cast) as the abstract
        trees say: `abstract_params_tree` the saved params without the frozen groups, `abstract_frozen` those
        ({group: ShapeDtypeStruct}, from the frozen store; a step saved with every group in `params`, as before
        the store existed, still restores)."""
        record = read_record(self.step_dir(step))
        groups = list(record.frozen_groups)
        params_target = abstract_params_tree if groups or not abstract_frozen else {**abstract_frozen,
                                                                                   **abstract_params_tree}
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(params_target), OPT_STATE: ocp.args.StandardRestore(abstract_opt_state),
            DATA_STATE: ocp.args.JsonRestore()}))
        out = {**{k: restored[k] for k in (PARAMS, OPT_STATE, DATA_STATE)}, TRAIN_STATE: record}
        params = out[PARAMS]
        out[FROZEN] = (load_frozen(self.step_dir(step), groups, abstract_frozen) if groups
                       else {g: params[g] for g in abstract_frozen})
        out[PARAMS] = {k: v for k, v in params.items() if k not in abstract_frozen} if abstract_frozen else params
        return out

    def step_dir(self, step: int) -> Path:
        """Directory of one step."""
        return self.directory / str(step)

    def wait(self) -> None:
        """Block until pending async saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.close()
