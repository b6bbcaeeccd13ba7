"""The stage loop: `run_stage(config, workdir)` trains one stage; `run(config, workdir)` also runs stage lists.

Resume is automatic: a workdir with a complete checkpoint continues from it (params, optimizer
state, step, data-iterator position); otherwise the stage starts from `config.init`.
"""

from __future__ import annotations

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
from xllava_jax.checkpoint import (FROZEN, TrainCheckpoints, TrainRecord, all_process_states, load_config,
                                   save_frozen, this_process_state, tokenizer_files)
from xllava_jax.train.harness import Harness, stage_harness
from xllava_jax.train.initialize import initial_model, with_exec
from xllava_jax.train.loss import modality_gap
from xllava_jax.train.metrics import MetricsWriter, step_flops
from xllava_jax.sharding import make_mesh
from xllava_jax.train.state import TrainState
from xllava_jax.train.step import eval_step_fn, jit_eval_step
from xllava_jax.train.validate import trainable_groups, validate

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """K non-finite steps in a row: the run stopped; the last good checkpoint is kept."""


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


def _nonfinite(streak: int, step: int, config: ml_collections.ConfigDict, saved: int) -> NonFiniteError:
    """The error that stops a run after `streak` non-finite steps in a row ending at `step`."""
    return NonFiniteError(f"{streak} non-finite steps in a row at step {step} (train.max_nonfinite="
                          f"{config.train.max_nonfinite}); last good checkpoint: step {saved}")


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


def run_stage(config: ml_collections.ConfigDict, workdir: str | Path, previous: str = "") -> dict:
    """Train one stage in `workdir` (resuming if it holds a checkpoint); returns the final step, metrics and
    checkpoint path. `previous`: the checkpoint that init.source 'previous' starts from."""
    validate(config, in_stage_list=bool(previous), check_paths=True)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = tuple(tuple(r) for r in config.logical_axis_rules)
    tok = load_tokenizer(config.tokenizer)
    groups = trainable_groups(config)
    ckpts = TrainCheckpoints(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    latest = ckpts.latest_step()
    if latest is not None:
        cfg, host_params = with_exec(load_config(ckpts.step_dir(latest)), config.model), None
    else:
        cfg, host_params = initial_model(config, tok, previous)
    is_llava = isinstance(cfg, LlavaConfig)
    images = is_llava and config.stage in (1, 2)
    slots = config.data.max_images_per_row
    source = inputs.load_records(config.data, config.seed)
    total = inputs.steps_for(config, len(source) if config.train.num_steps > 0 else inputs.rows_per_epoch(
        config.data, source, tok, cfg, config.train.batch_size, config.seed))
    h = stage_harness(config, cfg, total, mesh)
    data_state = None
    if latest is not None:
        state, data_state = _resume(ckpts, latest, h)
        log.info("resumed %s at step %d", workdir, latest)
    else:
        state = h.init_state(host_params, config.seed)
    if state.frozen and (latest is None or not (workdir / FROZEN).is_dir()):
        # once per stage, at the precision they were loaded in (random ones, or a workdir written before the store
        # existed: as held)
        save_frozen(workdir, trainable.split(host_params, groups, is_llava)[1] if host_params is not None
                    else state.frozen, cfg)
    it = inputs.make_iterator(config.data, source, tok, cfg, config.train.batch_size, config.seed)
    if data_state is not None:
        it.set_state(data_state)
    step_fn = eval_fn = None
    start = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, total, start, config.log.progress, config.log.tensorboard)
    last: dict[str, Any] = {}
    saved = latest if latest is not None else -1
    done = start
    tick, ticked = time.perf_counter(), start
    samples = 0
    prior = None  # the last step's metrics: the non-finite streak is read one step behind
    flops_of, window_flops = {}, 0.0  # model FLOPs per batch shape, and of the steps since the last log
    try:
        with Preempted() as preempted:
            for done in range(start + 1, total + 1):
                try:
                    local = next(it)
                except StopIteration:
                    done -= 1
                    break
                batch = inputs.to_global(inputs.host_batch(local, cfg, slots, images), mesh)
                samples += int(local["num_samples"]) * jax.process_count()
                if step_fn is None:
                    step_fn = h.jit_step(batch)
                shape = batch["input_ids"].shape  # one per length bucket
                if shape not in flops_of:
                    flops_of[shape] = step_flops(cfg, groups, batch["input_ids"].size, shape[1],
                                                 batch["pixel_values"].shape[0] * slots if images else 0)
                window_flops += flops_of[shape]
                state, metrics = step_fn(state, batch)
                writer.advance()
                stop = preempted.anywhere(done % config.train.sigterm_check_steps == 0 or done == total)
                save = done % config.checkpoint.every_steps == 0 or done == total or stop
                # no per-step wait for the device: read the previous step's streak (step `done` runs on while the
                # host builds the next batch), this step's too only before a save
                streak = int(jax.device_get(prior["nonfinite_streak"])) if prior is not None else 0
                if streak >= config.train.max_nonfinite:
                    raise _nonfinite(streak, done - 1, config, saved)
                streak = int(jax.device_get(metrics["nonfinite_streak"])) if save else streak
                prior = metrics
                do_eval = bool(config.eval.every_steps and config.eval_data.files
                               and done % config.eval.every_steps == 0)
                if done % config.log.every_steps == 0 or done == total or stop or do_eval or streak:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    dt = (now - tick) / max(done - ticked, 1)
                    last = {**m, "step_time_s": dt, "tokens_per_s": m["tokens"] / dt,
                            "samples_per_s": samples / (now - tick), "nonfinite_total": int(state.nonfinite_total)}
                    if config.log.peak_tflops > 0:
                        peak = config.log.peak_tflops * 1e12 * jax.device_count()
                        last["mfu"] = window_flops / (now - tick) / peak
                    if do_eval:
                        if eval_fn is None:
                            eval_fn = jit_eval_step(eval_step_fn(cfg), h.params(h.shardings),
                                                    _abstract_batch(batch), mesh, rules)
                        last.update(evaluate(config, eval_fn, h.params(state), cfg, tok, mesh, images))
                    writer.write(done, last)
                    tick, ticked, samples, window_flops = time.perf_counter(), done, 0, 0.0
                if streak >= config.train.max_nonfinite:
                    raise _nonfinite(streak, done, config, saved)
                if save:
                    record = TrainRecord(step=done, total_steps=total, stage=config.stage,
                                         template=config.data.template, instruction=config.data.instruction,
                                         frozen_groups=tuple(sorted(state.frozen)), nonfinite_streak=streak,
                                         nonfinite_total=int(state.nonfinite_total))
                    ckpts.save(_trained(h, state), state.opt_state, all_process_states(it.get_state()), record, cfg,
                               tokenizer_files(config.tokenizer))
                    saved = done
                if stop:
                    break
    finally:
        ckpts.close()
        writer.close()
    stats = getattr(it, "stats", None)  # this process's data counts (skips by reason, truncations)
    if stats is not None:
        log.info("%s finished at step %d; data (this process): %s", workdir, done, stats.one_line())
    return {"workdir": str(workdir), "step": done, "total_steps": total, "metrics": last,
            "checkpoint": str(ckpts.step_dir(saved)) if saved >= 0 else None, "model_config": cfg,
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
