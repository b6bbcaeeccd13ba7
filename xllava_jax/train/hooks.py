"""What the stage loop does after each step, one small piece each, registered with `Hooks.add_hook(fn,
every=N)`: the non-finite streak, evaluation, metrics (with MFU) and checkpoints. Preemption (train/loop.py
`Preempted`) decides `Step.stop`; the hooks see it as the step being the last."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import ml_collections

from xllava_jax.checkpoint import TrainCheckpoints, TrainRecord, all_process_states, tokenizer_files
from xllava_jax.train.metrics import MetricsWriter, step_flops
from xllava_jax.train.state import TrainState


class NonFiniteError(RuntimeError):
    """K non-finite steps in a row: the run stopped; the last good checkpoint is kept."""


@dataclasses.dataclass
class Step:
    """One finished optimizer step as the hooks see it."""

    number: int
    total: int  # the stage's last step
    state: TrainState
    metrics: dict  # this step's metrics (device arrays)
    batch: dict  # the global batch it trained on
    samples: int  # samples in the batch (all processes)
    stop: bool  # preempted: the loop saves and stops after this step
    save: bool  # a checkpoint is written at this step
    streak: int = 0  # non-finite steps in a row known at this step (NonFiniteStreak.read)
    extra: dict = dataclasses.field(default_factory=dict)  # metrics hooks add (evaluation) for the metrics log

    @property
    def last(self) -> bool:
        """The stage's final step, or the one a preemption stops at."""
        return self.number == self.total or self.stop


Hook = Callable[[Step], None]


class Hooks:
    """Functions called in order after each step: every N steps, and (`at_end`) at the last one."""

    def __init__(self):
        self._hooks: list[tuple[Hook, int, bool]] = []

    def add_hook(self, fn: Hook, every: int = 1, at_end: bool = False) -> None:
        """Call `fn(step)` at steps divisible by `every` (and at the last step when `at_end`); every <= 0: never."""
        self._hooks.append((fn, every, at_end))

    def run(self, step: Step) -> None:
        """Call the hooks due at `step`."""
        for fn, every, at_end in self._hooks:
            if (every > 0 and step.number % every == 0) or (at_end and step.last):
                fn(step)


class NonFiniteStreak:
    """Stops the run after `limit` non-finite steps in a row. No per-step wait for the device: each step reads
    the previous step's streak (the step runs on while the host builds the next batch), its own only before a
    save. `read` goes first; `stop_if_over` last (after the metrics are logged)."""

    def __init__(self, limit: int, saved: Callable[[], int]):
        self.limit, self.saved, self.prior = limit, saved, None

    def error(self, streak: int, number: int) -> NonFiniteError:
        """The error that stops a run after `streak` non-finite steps in a row ending at step `number`."""
        return NonFiniteError(f"{streak} non-finite steps in a row at step {number} (train.max_nonfinite="
                              f"{self.limit}); last good checkpoint: step {self.saved()}")

    def read(self, step: Step) -> None:
        """Raise on the previous step's streak; set `step.streak`."""
        prior = int(jax.device_get(self.prior["nonfinite_streak"])) if self.prior is not None else 0
        if prior >= self.limit:
            raise self.error(prior, step.number - 1)
        step.streak = int(jax.device_get(step.metrics["nonfinite_streak"])) if step.save else prior
        self.prior = step.metrics

    def stop_if_over(self, step: Step) -> None:
        """Raise when the streak known at this step reached the limit."""
        if step.streak >= self.limit:
            raise self.error(step.streak, step.number)


class MetricsLog:
    """Writes the step's metrics, throughput and MFU (model FLOPs of the steps since the last write over the
    devices' peak) every `every` steps, at the last step, after an evaluation, and while steps are non-finite."""

    def __init__(self, writer: MetricsWriter, config: ml_collections.ConfigDict, cfg: Any, groups: tuple[str, ...],
                 start: int):
        self.writer, self.every, self.peak_tflops = writer, config.log.every_steps, config.log.peak_tflops
        self.slots, self.flops = config.data.max_images_per_row, lambda shape, images: step_flops(
            cfg, groups, shape[0] * shape[1], shape[1], images)
        self.flops_of: dict[tuple, float] = {}  # model FLOPs per batch shape (one per length bucket)
        self.tick, self.ticked, self.samples, self.window_flops = time.perf_counter(), start, 0, 0.0
        self.last: dict[str, Any] = {}

    def __call__(self, step: Step) -> None:
        """Count the step; write when due."""
        shape = step.batch["input_ids"].shape
        if shape not in self.flops_of:
            pixels = step.batch.get("pixel_values")
            self.flops_of[shape] = self.flops(shape, pixels.shape[0] * self.slots if pixels is not None else 0)
        self.window_flops += self.flops_of[shape]
        self.samples += step.samples
        if step.number % self.every == 0 or step.last or step.extra or step.streak:
            self.write(step)

    def write(self, step: Step) -> None:
        """Write the metrics of the window ending at `step`."""
        m = {k: float(v) for k, v in jax.device_get(step.metrics).items()}
        now = time.perf_counter()
        dt = (now - self.tick) / max(step.number - self.ticked, 1)
        self.last = {**m, "step_time_s": dt, "tokens_per_s": m["tokens"] / dt,
                     "samples_per_s": self.samples / (now - self.tick),
                     "nonfinite_total": int(step.state.nonfinite_total)}
        if self.peak_tflops > 0:
            self.last["mfu"] = self.window_flops / (now - self.tick) / (self.peak_tflops * 1e12 * jax.device_count())
        self.last.update(step.extra)
        self.writer.write(step.number, self.last)
        self.tick, self.ticked, self.samples, self.window_flops = time.perf_counter(), step.number, 0, 0.0


class Evaluation:
    """Eval loss, accuracy and modality gap (`evaluate(params, batch_like)`) into `step.extra`."""

    def __init__(self, evaluate: Callable[[TrainState, dict], dict]):
        self.evaluate = evaluate

    def __call__(self, step: Step) -> None:
        """Evaluate the step's params."""
        step.extra.update(self.evaluate(step.state, step.batch))


class Checkpointing:
    """Saves a step checkpoint (trained params, optimizer and data-iterator state, its TrainRecord and the
    tokenizer files) at the steps `Step.save` marks."""

    def __init__(self, ckpts: TrainCheckpoints, config: ml_collections.ConfigDict, cfg: Any,
                 trained: Callable[[TrainState], dict], data_state: Callable[[], dict], saved: int):
        self.ckpts, self.config, self.cfg, self.trained, self.data_state = ckpts, config, cfg, trained, data_state
        self.tokenizer = tokenizer_files(config.tokenizer)
        self.saved = saved  # the last step saved (-1: none)

    def due(self, number: int, total: int, stop: bool) -> bool:
        """Whether step `number` is saved: every checkpoint.every_steps, the last step, and on preemption."""
        return number % self.config.checkpoint.every_steps == 0 or number == total or stop

    def __call__(self, step: Step) -> None:
        """Save the step when marked."""
        if not step.save:
            return
        state = step.state
        record = TrainRecord(step=step.number, total_steps=step.total, stage=self.config.stage,
                             template=self.config.data.template, instruction=self.config.data.instruction,
                             frozen_groups=tuple(sorted(state.frozen)), nonfinite_streak=step.streak,
                             nonfinite_total=int(state.nonfinite_total))
        self.ckpts.save(self.trained(state), state.opt_state, all_process_states(self.data_state()), record,
                        self.cfg, self.tokenizer)
        self.saved = step.number
