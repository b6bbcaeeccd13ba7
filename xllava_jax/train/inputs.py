"""Training data from a config: records and mixtures, the grain pipeline, and global device arrays.

Process-aware: each process builds the pipeline over its own shard of the records
(jax.process_index / process_count) with batch_size / process_count rows, and
`to_global` assembles the global arrays from the process-local rows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from xllava_jax.data import formats
from xllava_jax.data.arrayrecord import ArrayRecordSource
from xllava_jax.data.mixture import Mixture
from xllava_jax.data.multilingual import TaskMixConfig, build_task_mix
from xllava_jax.data.pipeline import BatchSpec, make_pipeline
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.data.tfds_source import TfdsTextSource
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig
from xllava_jax.tokenizer.spm import Tokenizer
from xllava_jax import sharding
from xllava_jax.train.defaults import TEXT_FORMATS
from xllava_jax.train.forward import row_slots


log = logging.getLogger(__name__)


def data_path(d: ml_collections.ConfigDict, path: str) -> str:
    """`path` resolved against data.root when relative."""
    return str(Path(d.root) / path) if d.root and not Path(path).is_absolute() else path


def parse_weights(spec: str) -> dict[str, float] | None:
    """'a:0.5,b' -> {'a': 0.5, 'b': 1.0}; '' -> None."""
    out = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, _, w = part.partition(":")
        out[key.strip()] = float(w) if w else 1.0
    return out or None


def load_file(d: ml_collections.ConfigDict, f: str, lang: str) -> Any:
    """The random-access records of one entry of data.files, read as data.format says."""
    if d.format == "tfds":  # 'name' or 'name:split', prepared under data.root (TFDS's own default when empty)
        name, _, split = f.partition(":")
        return TfdsTextSource(name, split or "train", d.root or None)
    path = data_path(d, f)
    if d.format == "text":
        return formats.load_text(path)
    if d.format == "arrayrecord":  # `data pack` shards: normalized records with their image bytes inline
        return ArrayRecordSource(path)
    return formats.load_llava(path, image_root=d.image_root or d.root or None, lang=lang or None)


def load_records(d: ml_collections.ConfigDict, seed: int, verbose: bool = True) -> Any:
    """The random-access record source of a data config: its files (and task mix) as one Mixture."""
    image_root = d.image_root or d.root or None
    sources, weights = [], []
    for i, f in enumerate(d.files):
        sources.append(load_file(d, f, d.langs[i] if d.langs else ""))
        weights.append(float(d.weights[i]) if d.weights else float(len(sources[-1])))
    if d.task_mix.files:
        parallel = [r for f in d.task_mix.files for r in formats.load_parallel(data_path(d, f), image_root)]
        mix = TaskMixConfig(tasks=parse_weights(d.task_mix.tasks), lang_weights=parse_weights(d.task_mix.lang_weights),
                            non_english_ratio=d.task_mix.non_english_ratio, seed=seed)
        records, _ = build_task_mix(parallel, mix, verbose=verbose and jax.process_index() == 0)
        sources.append(records)
        weights.append(d.task_mix.weight if d.weights else float(len(records)))
    empty = [f for f, s in zip(list(d.files) + ["task_mix"], sources) if not s]
    if empty:
        raise ValueError(f"data files with no usable record: {empty}")
    return sources[0] if len(sources) == 1 else Mixture(sources, weights if d.weights else None)


def image_size(cfg: ModelConfig) -> int:
    """Image side of a model config (0 for a bare decoder)."""
    return cfg.vision.image_size if isinstance(cfg, LlavaConfig) else 0


def _processor_and_spec(d: ml_collections.ConfigDict, tok: Tokenizer, cfg: ModelConfig, global_batch: int,
                        load_images: bool = True) -> tuple[SampleProcessor, BatchSpec]:
    """The sample processor and batch spec of a data config for this process."""
    size = image_size(cfg)
    processor = SampleProcessor(tok, d.template, d.max_len, cfg.num_image_tokens if size else 1, size or 336,
                                d.pad_image, load_images=load_images and bool(size),
                                split_documents=d.split_documents)
    spec = BatchSpec(global_batch // jax.process_count(), d.max_len, tok.pad_id, d.pack, d.max_images_per_row,
                     (size or 1, size or 1, 3), buckets=length_buckets(d))
    return processor, spec


def length_buckets(d: ml_collections.ConfigDict) -> tuple[int, ...]:
    """data.length_buckets with one process; none with several (each would pick its own length for its rows)."""
    if d.length_buckets and jax.process_count() > 1:
        log.warning("data.length_buckets=%s ignored: %d processes would pad their rows to different lengths; "
                    "batches are padded to max_len=%d", tuple(d.length_buckets), jax.process_count(), d.max_len)
        return ()
    return tuple(sorted(b for b in d.length_buckets if b < d.max_len))


def make_iterator(d: ml_collections.ConfigDict, source: Any, tok: Tokenizer, cfg: ModelConfig, global_batch: int,
                  seed: int, shuffle: bool = True) -> Any:
    """This process's batch iterator (endless: epochs repeat in fresh seeded orders); get_state/set_state."""
    processor, spec = _processor_and_spec(d, tok, cfg, global_batch)
    return iter(make_pipeline(source, processor, spec, seed=seed, shuffle=shuffle and d.shuffle, num_epochs=None,
                              group_by_length=d.group_by_length, num_workers=d.num_workers,
                              length_chunks=jax.device_count()))


def rows_per_epoch(d: ml_collections.ConfigDict, source: Any, tok: Tokenizer, cfg: ModelConfig, global_batch: int,
                   seed: int) -> int:
    """Global rows of one epoch: the records, or with packing or split text documents, the rows a tokens-only
    pass of epoch 0's pipeline makes (images not opened; the smallest shard times the processes)."""
    if not (d.pack or (d.format in TEXT_FORMATS and d.split_documents)):
        return len(source)
    processor, spec = _processor_and_spec(d, tok, cfg, global_batch, load_images=False)
    spec = dataclasses.replace(spec, drop_remainder=False)
    rows = 0
    for batch in make_pipeline(source, processor, spec, seed=seed, shuffle=d.shuffle, num_epochs=1,
                               group_by_length=d.group_by_length, num_workers=d.num_workers,
                               length_chunks=jax.device_count()):
        rows += int((batch["attention_mask"].sum(axis=1) > 0).sum())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        rows = int(np.asarray(multihost_utils.process_allgather(np.int64(rows))).min())
    return rows * jax.process_count()


def host_batch(batch: dict, cfg: ModelConfig, slots: int, images: bool) -> dict:
    """A pipeline batch as the step reads it: per-row image slots (or no pixels), no bookkeeping keys."""
    out = {k: batch[k] for k in ("input_ids", "labels", "attention_mask", "positions", "segment_ids")}
    if images:
        out["content_mask"] = batch["content_mask"]
    if images:
        out["pixel_values"] = row_slots(batch["input_ids"], batch["pixel_values"], cfg.image_token_id,
                                        cfg.num_image_tokens, slots)
    return out


def to_global(local: dict, mesh: Mesh) -> dict:
    """Global arrays sharded by row over (data, fsdp) from this process's rows."""
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
            for k, v in local.items()}


def steps_for(config: ml_collections.ConfigDict, num_rows: int) -> int:
    """Optimizer steps of the run: train.num_steps, else num_epochs over the rows of an epoch (rows_per_epoch)."""
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return max(1, math.floor(config.train.num_epochs * num_rows / config.train.batch_size))
