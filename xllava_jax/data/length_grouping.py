"""Length-grouped order as LLaVA's `group_by_modality_length` (llava/train/llava_trainer.py
`get_modality_length_grouped_indices`): each modality shuffled and cut into megabatches of one global batch,
each sorted by length and dealt to the devices so that their total lengths are even; the full megabatches of
both modalities shuffled together, the two last (partial) ones merged into a final mixed batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def record_length(record: dict) -> int:
    """LLaVA's cheap length proxy: words in all turns (text records: words of the text)."""
    if "text" in record:
        return len(record["text"].split())
    return sum(len(v.split()) if isinstance(v, str) else max(len(t.split()) for t in v.values())
               for _, v in record["turns"])


def split_to_even_chunks(indices: np.ndarray, lengths: np.ndarray, num_chunks: int) -> list[np.ndarray]:
    """LLaVA's split_to_even_chunks: longest-first indices dealt to the chunk with the least total length
    (a full chunk takes no more); strided when the count does not divide."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for i in indices:
        k = totals.index(min(totals))
        chunks[k].append(i)
        totals[k] += lengths[i]
        if len(chunks[k]) == per:
            totals[k] = float("inf")
    return [np.asarray(c, np.int64) for c in chunks]


def _megabatches(indices: np.ndarray, lengths: np.ndarray, batch_size: int, num_chunks: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """LLaVA's get_length_grouped_indices: shuffled, cut into global batches, each sorted (longest first) and
    split into `num_chunks` device chunks of even total length (the chunks concatenated in device order)."""
    indices = indices[rng.permutation(len(indices))]
    out = []
    for start in range(0, len(indices), batch_size):
        mb = indices[start:start + batch_size]
        mb = mb[np.argsort(-lengths[mb], kind="stable")]
        out.append(np.concatenate(split_to_even_chunks(mb, lengths, num_chunks)))
    return out


def length_grouped_order(lengths: Sequence[int], is_multimodal: Sequence[bool], batch_size: int,
                         rng: np.random.Generator, num_chunks: int = 1) -> np.ndarray:
    """A permutation of the records (module doc): `batch_size` is the global batch, `num_chunks` the devices
    the batch is split over (row blocks of batch_size / num_chunks)."""
    lengths, mm = np.asarray(lengths), np.asarray(is_multimodal, bool)
    if len(lengths) == 0:
        return np.zeros(0, np.int64)
    if mm.all() or not mm.any():
        return np.concatenate(_megabatches(np.arange(len(lengths)), lengths, batch_size, num_chunks, rng))
    image = _megabatches(np.flatnonzero(mm), lengths, batch_size, num_chunks, rng)
    text = _megabatches(np.flatnonzero(~mm), lengths, batch_size, num_chunks, rng)
    full = image[:-1] + text[:-1]
    full = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate(full + [np.sort(np.concatenate([image[-1], text[-1]]))])
