"""grain pipeline: sharded, seeded per-epoch order -> worker processing -> skip accounting, packing, batching.

Exact resume: `iterator.get_state()` (JSON-able, stored in checkpoints) / `iterator.set_state(state)`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import grain
import numpy as np

from xllava_jax.data.length_grouping import length_grouped_order, record_length
from xllava_jax.data.processing import PIECES, SKIP
from xllava_jax.data.report import DataError, DataStats
from xllava_jax.data.sequences import bucket_length, collate, fits, num_images

FOREVER = 1_000_000  # epochs when num_epochs is None


def process_shard(shard_index: int | None = None, shard_count: int | None = None) -> tuple[int, int]:
    """(index, count) of this process's shard: explicit arguments, else jax.process_index()/process_count()."""
    if shard_index is None or shard_count is None:
        import jax
        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    return shard_index, shard_count


def local_length(total: int, index: int, count: int, block: int) -> int:
    """How many of the global positions [0, total) belong to shard `index` (blocks of `block` dealt in turn)."""
    rounds, rest = divmod(total, block * count)
    return rounds * block + min(max(rest - index * block, 0), block)


@dataclasses.dataclass
class EpochOrder:
    """Maps a shard's position to a record. All shards share one global order (epoch e: a permutation of all
    records seeded by (seed, e)) and take its positions in blocks of `block` in turn, so with block = rows per
    process the global batches are the same whatever the number of processes."""

    source: Any  # random-access: list of records or a grain data source
    index: int  # this shard
    count: int  # number of shards
    block: int  # consecutive global positions a shard takes in turn (its rows per batch)
    seed: int
    shuffle: bool = True
    group_by_length: int = 0  # global batch size for length grouping (0 = off)
    lengths: np.ndarray | None = None
    multimodal: np.ndarray | None = None
    length_chunks: int = 1  # devices a global batch is split over (length grouping spreads lengths over them)

    def permutation(self, epoch: int) -> np.ndarray:
        """Global order of epoch `epoch` (record indices)."""
        return _permutation(self, epoch)

    def __call__(self, j: int) -> dict:
        """Record at this shard's position `j`."""
        g = ((j // self.block) * self.count + self.index) * self.block + j % self.block
        n = len(self.source)
        return self.source[int(self.permutation(g // n)[g % n])]

    def __hash__(self) -> int:
        return id(self)


@functools.lru_cache(maxsize=4)
def _permutation(order: EpochOrder, epoch: int) -> np.ndarray:
    """Cached epoch permutation (seeded by (seed, epoch))."""
    n = len(order.source)
    if not order.shuffle:
        return np.arange(n)
    rng = np.random.default_rng([order.seed, epoch])
    if order.group_by_length:
        return length_grouped_order(order.lengths, order.multimodal, order.group_by_length, rng, order.length_chunks)
    return rng.permutation(n)


def record_dataset(source: Any, *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1,
                   shard_index: int | None = None, shard_count: int | None = None,
                   group_by_length: int = 0, block: int = 1, length_chunks: int = 1) -> grain.MapDataset:
    """MapDataset of this process's records over `num_epochs` epochs of one global seeded order; shards take
    `block` consecutive positions in turn (shards partition every epoch; `group_by_length` = global batch,
    split over `length_chunks` devices)."""
    index, count = process_shard(shard_index, shard_count)
    lengths = multimodal = None
    if group_by_length:
        recs = [source[i] for i in range(len(source))]
        lengths = np.array([record_length(r) for r in recs])
        multimodal = np.array([bool(r.get("image") or r.get("image_bytes")) for r in recs])
    order = EpochOrder(source, index, count, block, seed, shuffle, group_by_length, lengths, multimodal,
                       length_chunks)
    total = len(source) * (num_epochs or FOREVER)
    return grain.MapDataset.range(local_length(total, index, count, block)).map(order)


@dataclasses.dataclass
class BatchSpec:
    """How examples become batches (see README batch contract)."""

    batch_size: int
    max_len: int
    pad_id: int
    pack: bool = False
    max_images_per_row: int = 1
    image_shape: tuple[int, int, int] = (336, 336, 3)
    drop_remainder: bool = True
    max_consecutive_skips: int = 0  # this many bad records in a row raise DataError (0: never); make_pipeline: 2 x shard
    buckets: tuple[int, ...] = ()  # pad each batch to the smallest of these lengths its rows fit (else max_len)


class BatchDataset(grain.IterDataset):
    """Counts/logs skip markers, packs examples into rows and collates rows into batches (main process)."""

    def __init__(self, parent: grain.IterDataset, spec: BatchSpec, stats: DataStats | None = None):
        super().__init__(parent)
        self.spec = spec
        self.stats = stats if stats is not None else DataStats()

    def __iter__(self) -> "BatchIterator":
        return BatchIterator(self._parent.__iter__(), self.spec, self.stats)


class BatchIterator(grain.DatasetIterator):
    """Iterator whose state is the parent state before the carried-over example (and which piece of a split
    document it is), plus the stats."""

    def __init__(self, parent: grain.DatasetIterator, spec: BatchSpec, stats: DataStats):
        super().__init__(parent)
        self.spec, self.stats = spec, stats
        self.pending: dict | None = None
        self.pending_state: tuple[dict, int] | None = None  # (parent state before its record, piece index)
        self.pieces: list[dict] = []  # the rest of a split document
        self.pieces_state: tuple[dict, int] | None = None  # (parent state before it, index of pieces[0])
        self.skip_pieces = 0  # after set_state: pieces of the first record already trained
        self.exhausted = False

    def _pull(self) -> tuple[dict | None, tuple[dict, int]]:
        """Next good example (skip markers counted) and (parent state before its record, piece index)."""
        if self.pieces:
            parent, index = self.pieces_state
            self.pieces_state = (parent, index + 1)
            return self.pieces.pop(0), (parent, index)
        run = 0
        while True:
            state = self._parent.get_state()
            try:
                ex = next(self._parent)
            except StopIteration:
                return None, state
            if SKIP in ex:
                self.stats.skip(ex["id"], ex[SKIP], ex.get("detail", ""))
                run += 1
                if run == self.spec.max_consecutive_skips:
                    raise DataError(f"{run} records in a row were skipped (a whole epoch of this shard): no usable data; skipped "
                                    f"so far {dict(self.stats.skipped)}, e.g. {self.stats.examples} "
                                    "(see the warnings above; for no_trained_tokens raise max_len)")
                continue
            if PIECES in ex:
                first, self.skip_pieces = self.skip_pieces, 0
                self.pieces, self.pieces_state = list(ex[PIECES][first + 1:]), (state, first + 1)
                return ex[PIECES][first], (state, first)
            self.skip_pieces = 0
            return ex, (state, 0)

    def _next_row(self) -> list[dict]:
        """One row: a single example, or (packing) as many consecutive examples as fit."""
        row: list[dict] = []
        max_images = self.spec.max_images_per_row if self.spec.pack else max(1, self.spec.max_images_per_row)
        while not self.exhausted:
            if self.pending is None:
                self.pending, self.pending_state = self._pull()
                if self.pending is None:
                    self.exhausted = True
                    break
            ex = self.pending
            if num_images(ex) > max_images:
                self.stats.skip(ex["id"], "too_many_images_for_row", f"{num_images(ex)} > {max_images}")
                self.pending = None
                continue
            if row and not fits(row, ex, self.spec.max_len, max_images):
                break
            row.append(ex)
            self.pending = None
            if not self.spec.pack:
                break
        return row

    def __next__(self) -> dict[str, np.ndarray]:
        rows = []
        while len(rows) < self.spec.batch_size:
            row = self._next_row()
            if not row:
                break
            rows.append(row)
        if not rows or (len(rows) < self.spec.batch_size and self.spec.drop_remainder):
            raise StopIteration
        for row in rows:
            for ex in row:
                self.stats.count(ex)
        longest = max(sum(len(ex["input_ids"]) for ex in row) for row in rows)
        batch = collate(rows, self.spec.batch_size, bucket_length(longest, self.spec.buckets, self.spec.max_len),
                        self.spec.pad_id,
                        self.spec.max_images_per_row, self.spec.image_shape)
        batch["num_samples"] = np.int32(sum(len(r) for r in rows))
        return batch

    def get_state(self) -> dict:
        """Parent state at the record of the first not-yet-batched example, its piece index, and the stats."""
        if self.pending is not None:
            parent, piece = self.pending_state
        elif self.pieces:
            parent, piece = self.pieces_state
        else:
            parent, piece = self._parent.get_state(), 0
        return {"parent": parent, "piece": piece, "stats": self.stats.to_dict()}

    def set_state(self, state: dict) -> None:
        """Resume exactly at the state from get_state."""
        self._parent.set_state(state["parent"])
        restored = DataStats.from_dict(state["stats"])
        self.stats.__dict__.update(restored.__dict__)
        self.pending = self.pending_state = self.pieces_state = None
        self.pieces = []
        self.skip_pieces = state.get("piece", 0)
        self.exhausted = False


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; accept defaults when the program never parsed them."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(source: Any, process: Callable[[dict], dict], spec: BatchSpec, *, seed: int = 0,
                  shuffle: bool = True, num_epochs: int | None = 1, shard_index: int | None = None,
                  shard_count: int | None = None, group_by_length: bool = False, num_workers: int = 0,
                  stats: DataStats | None = None, length_chunks: int = 0) -> BatchDataset:
    """The whole data pipeline: iterate it (iter(...)) for batches; `stats` collects skip/truncation counts;
    `length_chunks`: devices a global batch is split over, for group_by_length (0: the shards)."""
    index, count = process_shard(shard_index, shard_count)
    ds = record_dataset(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs, shard_index=index,
                        shard_count=count, group_by_length=spec.batch_size * count if group_by_length else 0,
                        block=spec.batch_size, length_chunks=length_chunks or count)
    # grain's default read-ahead (16 threads, 500 samples) rescans its whole buffer for every sample: ~30 ms of
    # host time per step of a 16-row batch (bench/PROFILE.md); two batches ahead on a thread per core suffice
    ids = ds.map(process).to_iter_dataset(grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1),
                                                             prefetch_buffer_size=2 * spec.batch_size))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    if not spec.max_consecutive_skips:
        # a run this long spans a whole epoch of the shard (runs across one epoch boundary stay below it)
        shard = local_length(len(source), index, count, spec.batch_size)
        spec = dataclasses.replace(spec, max_consecutive_skips=2 * max(shard, 1))
    return BatchDataset(ids, spec, stats)
