"""The stage loop: `run_stage(config, workdir)` trains one stage; `run(config, workdir)` also runs stage lists.

Resume is automatic: a workdir with a complete checkpoint continues from it (params, optimizer
state, step, data-iterator position); otherwise the stage starts from `config.init`.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xllava_jax.models.llava import LlavaConfig
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.train import inputs, trainable
from xllava_jax.checkpoint import FROZEN, TrainCheckpoints, load_config, save_frozen, this_process_state
from xllava_jax.models.params import ModelConfig
from xllava_jax.sharding import make_mesh
from xllava_jax.train.harness import Harness, stage_harness
from xllava_jax.train.hooks import Checkpointing, Evaluation, Hooks, MetricsLog, NonFiniteStreak, Step
from xllava_jax.train.initialize import initial_model, with_exec
from xllava_jax.train.loss import modality_gap
from xllava_jax.train.metrics import MetricsWriter
from xllava_jax.train.state import TrainState
from xllava_jax.train.step import eval_step_fn, jit_eval_step
from xllava_jax.train.validate import validate

log = logging.getLogger(__name__)


class Preempted:
    """Set by SIGTERM; the loop then saves and stops."""

    def __init__(self):
        self.flag = False
        self.previous = None

    def __enter__(self) -> "Preempted":
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping")
        self.flag = True

    def anywhere(self, check: bool = True) -> bool:
        """The flag of any process, so all stop at the same step: with several processes a small collective (which
        waits for the device), done only where `check` (at the same steps on every process), else False."""
        if jax.process_count() == 1:
            return self.flag
        if not check:
            return False
        from jax.experimental import multihost_utils
        return bool(np.asarray(multihost_utils.process_allgather(np.int32(self.flag))).max())

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _abstract_batch(batch: dict) -> dict:
    """Shapes and dtypes of a global batch."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def _trained(h: Harness, state: TrainState) -> dict:
    """The params a step checkpoint holds: the full tree without the frozen groups (those are in the store)."""
    return trainable.merge(state.params, {}, h.is_llava)


def _resume(ckpts: TrainCheckpoints, step: int, h: Harness) -> tuple[TrainState, dict]:
    """The state and data-iterator state of a checkpoint step."""
    abstract = h.abstract_state()
    restored = ckpts.restore(step, _trained(h, abstract), abstract.opt_state, abstract.frozen)
    t, _ = trainable.split(restored["params"], h.groups, h.is_llava)
    record = restored["train_state"]
    scalar = lambda v: jax.device_put(jnp.int32(v), h.shardings.step)  # noqa: E731
    state = TrainState(scalar(record.step), t, restored["frozen"], restored["opt_state"],
                       scalar(record.nonfinite_streak), scalar(record.nonfinite_total))
    return state, this_process_state(restored["data_state"])


def evaluate(config: ml_collections.ConfigDict, eval_fn: Any, params: dict, cfg: Any, tok: Any, mesh: Any,
             images: bool) -> dict[str, float]:
    """Eval loss, token accuracy and (with images) the modality gap over eval.num_batches batches."""
    d = config.eval_data
    batch_size = config.eval.batch_size or config.train.batch_size // config.train.grad_accum
    it = inputs.make_iterator(d, inputs.load_records(d, config.seed, verbose=False), tok, cfg, batch_size,
                              config.seed, shuffle=False)
    total: dict[str, Any] = {}
    for _ in range(config.eval.num_batches):
        batch = inputs.to_global(inputs.host_batch(next(it), cfg, d.max_images_per_row, images), mesh)
        sums = jax.device_get(eval_fn(params, batch))
        total = {k: total.get(k, 0) + np.asarray(v) for k, v in sums.items()}
    n = max(float(total["tokens"]), 1.0)
    out = {"eval_loss": float(total["nll"]) / n, "eval_accuracy": float(total["correct"]) / n}
    if "gap_images" in total:
        out.update({f"eval_{k}": v for k, v in modality_gap(total).items()})
    return out


@dataclasses.dataclass
class Stage:
    """What a stage runs with: the mesh, tokenizer, model config, harness, checkpoints and data."""

    mesh: Any
    tok: Any
    cfg: ModelConfig
    harness: Harness
    ckpts: TrainCheckpoints
    source: Any  # the training records
    total: int  # the stage's last step
    images: bool  # batches carry pixels (a LLaVA in stage 1 or 2)
    latest: int | None  # the step it resumes from


def prepare(config: ml_collections.ConfigDict, workdir: Path, previous: str) -> tuple[Stage, Any]:
    """The stage of `config` in `workdir`, and the host params a fresh run starts from (None when resuming or
    initialising randomly on the devices)."""
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    tok = load_tokenizer(config.tokenizer)
    ckpts = TrainCheckpoints(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    latest = ckpts.latest_step()
    if latest is not None:
        cfg, host_params = with_exec(load_config(ckpts.step_dir(latest)), config.model), None
    else:
        cfg, host_params = initial_model(config, tok, previous)
    images = isinstance(cfg, LlavaConfig) and config.stage in (1, 2)
    source = inputs.load_records(config.data, config.seed)
    total = inputs.steps_for(config, len(source) if config.train.num_steps > 0 else inputs.rows_per_epoch(
        config.data, source, tok, cfg, config.train.batch_size, config.seed))
    return Stage(mesh, tok, cfg, stage_harness(config, cfg, total, mesh), ckpts, source, total, images,
                 latest), host_params


def start_state(config: ml_collections.ConfigDict, workdir: Path, stage: Stage, host_params: Any
                ) -> tuple[TrainState, Any]:
    """The state the stage starts from (resumed, or initialised) and its data iterator; writes the frozen store
    once per stage, at the precision the groups were loaded in (random ones, or a workdir written before the
    store existed: as held)."""
    h, data_state = stage.harness, None
    if stage.latest is not None:
        state, data_state = _resume(stage.ckpts, stage.latest, h)
        log.info("resumed %s at step %d", workdir, stage.latest)
    else:
        state = h.init_state(host_params, config.seed)
    if state.frozen and (stage.latest is None or not (workdir / FROZEN).is_dir()):
        save_frozen(workdir, trainable.split(host_params, h.groups, h.is_llava)[1] if host_params is not None
                    else state.frozen, stage.cfg)
    it = inputs.make_iterator(config.data, stage.source, stage.tok, stage.cfg, config.train.batch_size, config.seed)
    if data_state is not None:
        it.set_state(data_state)
    return state, it


def stage_hooks(config: ml_collections.ConfigDict, stage: Stage, writer: MetricsWriter, it: Any, start: int
                ) -> tuple[Hooks, Checkpointing, MetricsLog]:
    """The hooks of a stage in the order they run: non-finite streak, evaluation, metrics, checkpoints."""
    h, eval_fn = stage.harness, None

    def evaluate_state(state: TrainState, batch: dict) -> dict:
        nonlocal eval_fn
        if eval_fn is None:
            eval_fn = jit_eval_step(eval_step_fn(stage.cfg), h.params(h.shardings), _abstract_batch(batch),
                                    stage.mesh, tuple(tuple(r) for r in config.logical_axis_rules))
        return evaluate(config, eval_fn, h.params(state), stage.cfg, stage.tok, stage.mesh, stage.images)

    saving = Checkpointing(stage.ckpts, config, stage.cfg, lambda state: _trained(h, state), it.get_state,
                           stage.latest if stage.latest is not None else -1)
    streak = NonFiniteStreak(config.train.max_nonfinite, lambda: saving.saved)
    metrics = MetricsLog(writer, config, stage.cfg, h.groups, start)
    hooks = Hooks()
    hooks.add_hook(streak.read)
    hooks.add_hook(Evaluation(evaluate_state), every=config.eval.every_steps if config.eval_data.files else 0)
    hooks.add_hook(metrics)
    hooks.add_hook(streak.stop_if_over)
    hooks.add_hook(saving)
    return hooks, saving, metrics


def run_stage(config: ml_collections.ConfigDict, workdir: str | Path, previous: str = "") -> dict:
    """Train one stage in `workdir` (resuming if it holds a checkpoint); returns the final step, metrics and
    checkpoint path. `previous`: the checkpoint that init.source 'previous' starts from."""
    validate(config, in_stage_list=bool(previous), check_paths=True)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stage, host_params = prepare(config, workdir, previous)
    state, it = start_state(config, workdir, stage, host_params)
    done = start = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, stage.total, start, config.log.progress, config.log.tensorboard)
    hooks, saving, metrics = stage_hooks(config, stage, writer, it, start)
    step_fn = None
    try:
        with Preempted() as preempted:
            for done in range(start + 1, stage.total + 1):
                local = next(it, None)
                if local is None:  # a finite source ran out
                    done -= 1
                    break
                batch = inputs.to_global(inputs.host_batch(local, stage.cfg, config.data.max_images_per_row,
                                                           stage.images), stage.mesh)
                step_fn = step_fn or stage.harness.jit_step(batch)
                state, out = step_fn(state, batch)
                writer.advance()
                stop = preempted.anywhere(done % config.train.sigterm_check_steps == 0 or done == stage.total)
                hooks.run(Step(done, stage.total, state, out, batch, int(local["num_samples"]) * jax.process_count(),
                               stop, saving.due(done, stage.total, stop)))
                if stop:
                    break
    finally:
        stage.ckpts.close()
        writer.close()
    return stage_result(workdir, stage, it, done, saving.saved, metrics.last)


def stage_result(workdir: Path, stage: Stage, it: Any, done: int, saved: int, last: dict) -> dict:
    """What run_stage returns (and logs): the final step, metrics, checkpoint, model config and data counts."""
    stats = getattr(it, "stats", None)  # this process's data counts (skips by reason, truncations)
    if stats is not None:
        log.info("%s finished at step %d; data (this process): %s", workdir, done, stats.one_line())
    return {"workdir": str(workdir), "step": done, "total_steps": stage.total, "metrics": last,
            "checkpoint": str(stage.ckpts.step_dir(saved)) if saved >= 0 else None, "model_config": stage.cfg,
            **({"data": {k: v for k, v in stats.to_dict().items() if k in ("kept", "truncated", "skipped")}}
               if stats is not None else {})}


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, dict]:
    """Run a config: one stage, or each stage of `config.stages` in DIR/<name> (init.source 'previous'
    starts from the stage before). Returns {stage name: run_stage result (plus its `seconds`)}."""
    workdir = Path(workdir)
    validate(config, check_paths=True)
    results, previous = {}, ""
    for name in config.stages or ("stage",):
        start = time.perf_counter()
        stage = config[name] if config.stages else config
        results[name] = run_stage(stage, workdir / name if config.stages else workdir, previous)
        results[name]["seconds"] = time.perf_counter() - start
        previous = results[name]["checkpoint"] or ""
    return results
