"""The model loop: one thread owns the device and the slot engine; requests wait in a bounded queue, are
prefilled and inserted as slots free up, and hear their text through a callback (thread-safe on their side)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Callable, Sequence

import numpy as np

from xllava_jax.infer.generate import finish
from xllava_jax.infer.slots import NO_TOKEN, RowSampling, SlotEngine
from xllava_jax.infer.streaming import TextStream

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Delta:
    """New answer text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Finished:
    """The end of an answer."""

    text: str
    finish_reason: str  # eos | stop | length (Generation's)
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Failed:
    """The request could not be run (the message says why)."""

    message: str


Event = Delta | Finished | Failed


class QueueFull(Exception):
    """The waiting queue holds as many requests as it may."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the model loop."""

    prompt: Sequence[int]
    images: Sequence[np.ndarray]
    max_tokens: int
    sampling: RowSampling
    stop: tuple[str, ...]
    emit: Callable[[Event], None]  # called from the model thread
    cancelled: bool = False
    ids: list[int] = dataclasses.field(default_factory=list)
    stream: TextStream | None = None


@dataclasses.dataclass
class Counters:
    """What /health reports."""

    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0  # refused because the queue was full
    tokens: int = 0


class ModelLoop:
    """Continuous batching: admit waiting jobs into free slots, then step every busy slot, until stopped."""

    def __init__(self, engine: SlotEngine, tokenizer, eos_ids: Sequence[int], queue_size: int, steps_per_call: int):
        self.engine, self.tokenizer, self.eos = engine, tokenizer, tuple(eos_ids)
        self.queue_size, self.steps = queue_size, steps_per_call
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}  # slot -> job (touched only by the model thread)
        self.wake = threading.Condition()
        self.stopping = False
        self.counters = Counters()
        self.thread = threading.Thread(target=self.run, name="model-loop", daemon=True)

    def start(self) -> None:
        """Start the model thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop the model thread (waiting and running jobs are told it failed)."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job (QueueFull when the queue is full)."""
        with self.wake:
            if len(self.waiting) >= self.queue_size:  # make room from jobs whose clients left
                kept = [j for j in self.waiting if not j.cancelled]
                self.counters.cancelled += len(self.waiting) - len(kept)
                self.waiting = collections.deque(kept)
            if len(self.waiting) >= self.queue_size:
                self.counters.rejected += 1
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--queue_size {self.queue_size})")
            self.waiting.append(job)
            self.counters.submitted += 1
            self.wake.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job (its client left or timed out): out of the queue, or its slot freed at the next step."""
        with self.wake:
            job.cancelled = True
            self.wake.notify()

    def status(self) -> dict[str, int]:
        """Slots, busy slots, waiting jobs and the counters."""
        with self.wake:
            return {"slots": self.engine.slots, "busy": len(self.running), "waiting": len(self.waiting),
                    **dataclasses.asdict(self.counters)}

    def run(self) -> None:
        """The loop of the model thread."""
        while True:
            with self.wake:
                while not self.stopping and not self.waiting and not self.running:
                    self.wake.wait()
                if self.stopping:
                    break
            try:
                self.drop_cancelled()
                self.admit()
                if self.running:
                    self.decode()
            except Exception as e:  # noqa: BLE001 - a device error ends the running jobs, not the server
                log.exception("decode failed; ending the running requests")
                for slot, job in list(self.running.items()):
                    self.release(slot)
                    self.counters.failed += 1
                    job.emit(Failed(f"{type(e).__name__}: {e}"))
                self.engine.reset()
        for job in [*self.running.values(), *self.waiting]:
            job.emit(Failed("the server is shutting down"))

    def next_waiting(self) -> Job | None:
        """The first waiting job that is still wanted."""
        with self.wake:
            while self.waiting:
                job = self.waiting.popleft()
                if not job.cancelled:
                    return job
                self.counters.cancelled += 1
        return None

    def admit(self) -> None:
        """Prefill waiting jobs into free slots."""
        while self.engine.free_slot() is not None:
            job = self.next_waiting()
            if job is None:
                return
            slot = self.engine.free_slot()
            try:
                prefilled = self.engine.prefill(job.prompt, job.images)
                first = self.engine.insert(slot, prefilled, job.max_tokens, job.sampling)
            except Exception as e:  # noqa: BLE001 - one bad job must not stop the loop
                log.exception("prefill failed")
                self.counters.failed += 1
                job.emit(Failed(f"{type(e).__name__}: {e}"))
                continue
            job.stream = TextStream(self.tokenizer, job.stop)
            self.running[slot] = job
            self.feed(slot, job, [first])

    def drop_cancelled(self) -> None:
        """Free the slots of cancelled jobs."""
        for slot, job in list(self.running.items()):
            if job.cancelled:
                self.release(slot)
                self.counters.cancelled += 1

    def decode(self) -> None:
        """One chunk of decode steps for every busy slot; hand out the new tokens."""
        out = self.engine.step(self.steps)
        for slot, job in list(self.running.items()):
            new = [int(t) for t in out[slot] if t != NO_TOKEN]
            self.feed(slot, job, new, ended=not new)  # no token in a whole chunk: the device ended the row

    def feed(self, slot: int, job: Job, new: list[int], ended: bool = False) -> None:
        """Add a job's new tokens: emit the text that became safe to show; finish it at EOS, its budget, a
        stop string, or when the device `ended` it (its slot is freed at once)."""
        job.ids += new
        eos = () if job.sampling.ignore_eos else self.eos
        hit = next((j for j, t in enumerate(job.ids) if t in eos), None)
        final = ended or hit is not None or len(job.ids) >= job.max_tokens
        delta = job.stream.update(job.ids[:hit] if hit is not None else job.ids, final=final)
        if delta:
            job.emit(Delta(delta))
        if not (final or job.stream.stopped):
            return
        self.release(slot)
        generation = finish(np.asarray(job.ids), eos, job.stream)
        self.counters.completed += 1
        self.counters.tokens += len(generation.tokens)
        job.emit(Finished(generation.text, generation.finish_reason, len(generation.tokens)))

    def release(self, slot: int) -> None:
        """Free a slot now."""
        self.running.pop(slot, None)
        self.engine.release(slot)

